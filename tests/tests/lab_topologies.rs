//! Every built-in topology, built through the lab library with suidao run across it: every
//! expected pair reachable through the tunnel, and in `nat` the roaming step (traffic goes on
//! after the client's outer address changes, and the server's endpoint for the client follows).
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use suidao_lab::demo;
use suidao_lab::topology::Spec;

fn run(name: &str, tools: &[&str]) {
    if !suidao_lab::require(&format!("lab topology {name}"), tools) {
        return;
    }
    let spec = Spec::builtin(name, 3).unwrap();
    let pass = demo::run(demo::Options {
        spec,
        explain: false,
        keep: false,
    })
    .unwrap();
    assert!(pass, "the {name} demo failed (its report is above)");
}

#[test]
fn p2p() {
    run("p2p", &["ping"]);
}

#[test]
fn hub_with_three_clients() {
    run("hub", &["ping"]);
}

#[test]
fn site_lans_reach_each_other_only_through_the_tunnel() {
    if !suidao_lab::require("site isolation", &["ping"]) {
        return;
    }
    // Without suidao, the two LANs cannot reach each other: the gateways have no route.
    let lab = suidao_lab::topology::Lab::build(Spec::site(), false).unwrap();
    assert!(!suidao_lab::suidao::ping(lab.ns("lan-a").unwrap(), "10.2.0.2", 1).unwrap());
    drop(lab);
    run("site", &["ping"]);
}

#[test]
fn nat_with_roaming() {
    run("nat", &["ping", "nft"]);
}
