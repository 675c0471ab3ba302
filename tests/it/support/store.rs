//! Store handles for the store/client/server suites, and a macro running one suite against both
//! the standalone Redis and the 3-master Redis Cluster.

use std::time::Duration;

use routestate::store::{RedisOptions, Store};

/// A store on the standalone Redis.
pub async fn standalone() -> Store {
    Store::connect(&RedisOptions { op_timeout: Duration::from_secs(5), ..RedisOptions::standalone(super::redis_url()) })
        .await
        .expect("connecting to the standalone Redis")
}

/// A store on the Redis Cluster.
pub async fn cluster() -> Store {
    Store::connect(&RedisOptions {
        op_timeout: Duration::from_secs(5),
        ..RedisOptions::cluster(super::redis_cluster_urls())
    })
    .await
    .expect("connecting to the Redis Cluster")
}

/// `both!(f, g)` makes `standalone::f`, `cluster::f`, … tests that call `f(store).await`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod standalone {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::support::store::standalone().await).await })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::support::store::cluster().await).await })*
        }
    };
}
