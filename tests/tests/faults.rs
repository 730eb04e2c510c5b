//! The fault suite's short version in `make test`: `yr bench faults --json` on a real cluster
//! under load, with the faults it runs here. Each must be recovered, with nothing acknowledged
//! lost and no process of the run left after `yr stop`.

use std::time::Duration;

use yr_tests::cluster::run_yr_within;

#[test]
fn the_short_fault_suite_recovers_from_every_fault_and_loses_nothing() {
    let out = run_yr_within(
        &[
            "bench",
            "faults",
            "--json",
            "--masters",
            "1",
            "--only",
            "function-process,driver",
            "--deadline-s",
            "30",
        ],
        Duration::from_secs(300),
    )
    .expect_ok("yr bench faults");
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    let faults = v["faults"].as_array().expect("a list of faults");
    assert_eq!(faults.len(), 2, "{line}");
    for f in faults {
        assert_eq!(f["recovered"], true, "{f}");
        assert_eq!(f["acknowledged_lost"], 0, "{f}");
        assert!(
            !f["killed"].as_array().expect("killed").is_empty(),
            "something was killed: {f}"
        );
    }
    assert_eq!(v["processes_left_after_stop"], 0, "{line}");
    assert_eq!(v["all_targets_met"], true, "{line}");
}
