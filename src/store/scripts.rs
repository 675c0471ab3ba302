//! Every Lua script of the wire contract, in one place, compiled into the binary with
//! `include_str!` and run through [`redis::Script`] (EVALSHA, reloaded on NOSCRIPT after a server
//! restart or `SCRIPT FLUSH`). A link script is `common.lua` followed by its body; a script that
//! reads or writes pod states is `common.lua`, `states.lua`, then its body. The SHA1s are part of
//! the contract only in that other clients must send the same text.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| Script::new(concat!(include_str!("lua/common.lua"), include_str!(concat!("lua/", $file)))))
    };
    (states $file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/common.lua"),
                include_str!("lua/states.lua"),
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

/// `set_link.lua`: unconditional overwrite, returns the previous pod or -1.
pub static SET_LINK: LazyLock<Script> = script!("set_link.lua");
/// `set_link_if_absent.lua`: first writer wins, returns the pod actually linked.
pub static SET_LINK_IF_ABSENT: LazyLock<Script> = script!("set_link_if_absent.lua");
/// `try_set_link.lua`: returns {success, current, previous}.
pub static TRY_SET_LINK: LazyLock<Script> = script!("try_set_link.lua");
/// `remove_link.lua`: removal, optionally conditional on the pod, optionally delayed.
pub static REMOVE_LINK: LazyLock<Script> = script!("remove_link.lua");
/// `get_link_if_persist.lua`: the pod of a persistent link, or -1.
pub static GET_LINK_IF_PERSIST: LazyLock<Script> = script!("get_link_if_persist.lua");
/// `pick_and_link.lua`: the whole placement of a user.
pub static PICK_AND_LINK: LazyLock<Script> = script!(states "pick_and_link.lua");
/// `pick_candidate.lua`: the state-slot half of a placement on Redis Cluster.
pub static PICK_CANDIDATE: LazyLock<Script> = script!(states "pick_candidate.lua");
/// `link_if_unchanged.lua`: the link-slot half of a placement on Redis Cluster.
pub static LINK_IF_UNCHANGED: LazyLock<Script> = script!("link_if_unchanged.lua");
/// `publish.lua`: one operator tick of one service.
pub static PUBLISH: LazyLock<Script> = script!(states "publish.lua");
/// `report.lua`: a pod's own report.
pub static REPORT: LazyLock<Script> = script!(states "report.lua");
