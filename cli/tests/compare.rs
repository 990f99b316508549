#![allow(clippy::unwrap_used)]
//! `dvd bench compare` end to end on the small committed model (real `dvd up` deployments,
//! coupled, pinned and capped, on loopback), and `dvd bench plan` reading its report.

use crate::common;

use common::{dvd, json_output};

#[test]
fn compare_measures_both_deployments_and_plan_reads_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("compare.json");
    // Two cores when the machine has them (the CPU stand-in for two GPUs), else one.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let language = if cores >= 2 { "1" } else { "0" };
    let json = json_output(
        dvd()
            .args(["bench", "compare", "--json", "--num-prompts", "40"])
            .args(["--probe-requests", "3", "--probe-request-rate", "100"])
            .args(["--output-len", "16", "--vision-cpus", "0"])
            .args(["--language-cpus", language, "--gateway-cpus", language])
            .args(["--validate-splits", "2V:1L"])
            .arg("--result-file")
            .arg(&report),
    );
    for key in [
        "coupled_request_throughput",
        "dvd_request_throughput",
        "pipeline_efficiency",
        "probe_ttft_p99_inflation_dvd",
        "probe_ttft_p99_inflation_coupled",
        "vision_alone_request_throughput",
        "language_alone_request_throughput",
    ] {
        let v = json[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(json["dvd"]["completed"], 40);
    assert_eq!(json["coupled"]["completed"], 40);
    assert!(json["image_request_image_tokens"].as_u64().unwrap() > 0);
    // The language-alone prompts have exactly the image prompts' length, counted by the server.
    let image = json["image_request_prompt_tokens"].as_f64().unwrap();
    let text = json["text_request_prompt_tokens"].as_f64().unwrap();
    assert_eq!(text, image);

    // The planner fitted on 1V:1L (capped servers) and checked on a split it did not see.
    let fit = &json["plan_fit"];
    assert_eq!(fit["unit_cores"], 0.25);
    for key in [
        "fit_vision_capacity",
        "fit_language_capacity",
        "fit_efficiency",
    ] {
        assert!(fit[key].as_f64().unwrap() > 0.0, "{key}: {fit}");
    }
    let checks = json["plan_validation"].as_array().unwrap();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0]["split"], "2V:1L");
    let (predicted, measured) = (
        checks[0]["predicted_rps"].as_f64().unwrap(),
        checks[0]["measured_rps"].as_f64().unwrap(),
    );
    assert!(predicted > 0.0 && measured > 0.0);
    let error = checks[0]["error"].as_f64().unwrap();
    assert!((error - (predicted - measured).abs() / measured).abs() < 1e-9);

    let plan = json_output(
        dvd()
            .args(["bench", "plan", "--json", "--gpus", "4", "--profile"])
            .arg(&report)
            .arg("--measured")
            .arg(&report),
    );
    let predicted = plan["plan"]["predicted_request_throughput"]
        .as_f64()
        .unwrap();
    let measured = json["dvd_request_throughput"].as_f64().unwrap();
    // With the report's own efficiency the model reproduces the run it came from.
    assert!((predicted / measured - 1.0).abs() < 1e-6);
    assert_eq!(plan["splits"].as_array().unwrap().len(), 3);
}
