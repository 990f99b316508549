//! Admission that holds end to end: a burst far past every limit of a default `dvd up` is
//! answered at the front door (429) or served; an admitted request is never failed for load.

use crate::common::{Up, dvd, http, json_output, metric};

/// 600 image requests at once (each its own picture) against the demo deployment: the gateway
/// admits 256, the vision server queues 64, and every request gets a 200 or a 429.
#[test]
fn a_burst_gets_only_answers_and_429s() {
    let up = Up::start(&[]);
    let burst = json_output(
        dvd()
            .args(["bench", "serve", "--url", &format!("http://{}", up.http)])
            .args(["--num-prompts", "600", "--request-rate", "inf"])
            .args(["--image-sizes", "224", "--output-len", "2", "--ignore-eos"])
            .args(["--seed", "11", "--json"]),
    );
    let count = |key: &str| burst[key].as_u64().unwrap();
    assert_eq!(count("failed"), 0, "{burst}");
    assert_eq!(count("rejected_overload"), 0, "{burst}");
    assert_eq!(count("completed") + count("rejected_429"), 600, "{burst}");
    // Both kinds happened: the burst went past the front door's 256, and the admitted requests
    // outnumbered the vision server's queue, so some waited for a slot.
    assert!(count("completed") >= 256, "{burst}");
    assert!(count("rejected_429") > 0, "{burst}");
    let metrics = http(&up.http, "GET", "/metrics", b"").body;
    assert!(
        metric(&metrics, "dvd_gateway_busy_waits_total") > 0.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("outcome=\"502\"") && !metrics.contains("outcome=\"503\""),
        "{metrics}"
    );
}
