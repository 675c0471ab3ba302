//! Every Lua script of the wire contract, in one place. Each is `common.lua` followed by its
//! body, compiled into the binary with `include_str!` and run through [`redis::Script`], which
//! sends EVALSHA and reloads the script on NOSCRIPT (after a server restart or `SCRIPT FLUSH`).
//! The SHA1s are part of the contract only in that other clients must send the same text.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| Script::new(concat!(include_str!("lua/common.lua"), include_str!(concat!("lua/", $file)))))
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
pub static PICK_AND_LINK: LazyLock<Script> = script!("pick_and_link.lua");

/// Every script with its file name (for docs, tests and preloading).
pub fn all() -> [(&'static str, &'static Script); 6] {
    [
        ("set_link.lua", &SET_LINK),
        ("set_link_if_absent.lua", &SET_LINK_IF_ABSENT),
        ("try_set_link.lua", &TRY_SET_LINK),
        ("remove_link.lua", &REMOVE_LINK),
        ("get_link_if_persist.lua", &GET_LINK_IF_PERSIST),
        ("pick_and_link.lua", &PICK_AND_LINK),
    ]
}
