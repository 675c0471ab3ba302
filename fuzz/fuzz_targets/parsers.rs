//! Fuzzes the wire parsers: `PodState::parse`, `Workload::parse` and `ServiceSnapshot::from_hash`.
//! None may panic on any input; whatever parses must round-trip; a snapshot's pick is always a
//! good, routable pod.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routestate_core::{PodState, SelectionPolicy, ServiceSnapshot, Workload};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(state) = PodState::parse(&text) {
        assert_eq!(PodState::parse(&state.encode()), Ok(state), "pod state round trip of {text:?}");
    }

    if let Ok(workload) = Workload::parse(&text) {
        let again = Workload::parse(&workload.encode()).expect("an encoded workload parses");
        assert_eq!(again, workload, "workload round trip of {text:?}");
    }

    // The first 16 bytes choose the clock, window, range and random value; the rest is a state
    // hash as `field=value` lines.
    if data.len() >= 16 {
        let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        let now_ms = u64::from(word(0)) * 1000;
        let policy = SelectionPolicy { window_ms: u64::from(word(4) % 120_000), range: u64::from(word(8) % 10_000) };
        let random = word(12);
        let hash = String::from_utf8_lossy(&data[16..]);
        let entries = hash.lines().map(|l| l.split_once('=').unwrap_or((l, "")));
        let snap = ServiceSnapshot::from_hash(entries, now_ms, policy);
        if let Some(pod) = snap.pick(random) {
            assert!(snap.good_pods().contains(&pod));
            assert!(snap.is_routable(pod) && snap.is_available(pod) && snap.is_alive(pod));
        } else {
            assert!(snap.good_pods().is_empty());
        }
    }
});
