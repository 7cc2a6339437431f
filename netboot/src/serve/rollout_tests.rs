//! The rollout state machine, step by step, with the clock and the nodes' words given.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::serve::status::Stage;

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn rollout(waves: Vec<Wave>) -> Rollout {
    Rollout {
        id: 1,
        rev: 0,
        path: "manifest.json".into(),
        version: 5,
        previous: Some(4),
        manifest: String::new(),
        signature: String::new(),
        expires: None,
        new_flists: BTreeSet::new(),
        waves,
        wait: 10,
        deadline: 60,
        budget: 0,
        state: State::Running,
        reason: String::new(),
        received: BTreeSet::new(),
        excused: BTreeSet::new(),
        created: 0.0,
        updated: 0.0,
        history: Vec::new(),
    }
}

fn wave(nodes: &[&str]) -> Wave {
    Wave { spec: WaveSpec::Rest, nodes: ids(nodes), started: None, healthy: None }
}

fn said(stages: &[(f64, &str, &str)]) -> NodeRecord {
    NodeRecord {
        stages: stages
            .iter()
            .map(|(at, s, d)| Stage { at: *at, stage: s.to_string(), detail: d.to_string() })
            .collect(),
        ..Default::default()
    }
}

/// Runs `step` and applies what it says, as the server does.
fn run(r: &mut Rollout, now: f64, standing: &[(&str, Verdict)]) -> Option<Change> {
    let standing: BTreeMap<String, Verdict> = standing.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    let change = step(r, now, &standing)?;
    r.apply(&change, now);
    Some(change)
}

#[test]
fn waves_start_in_turn_once_the_one_before_is_healthy_and_its_wait_is_over() {
    let mut r = rollout(vec![wave(&["a"]), wave(&["b", "c"]), wave(&["d"])]);
    assert!(!r.serves("a"), "nothing is served before the first wave starts");
    assert_eq!(run(&mut r, 100.0, &[]), Some(Change::WaveStarts(0)));
    assert!(r.serves("a") && !r.serves("b") && !r.serves("d"));
    assert_eq!(run(&mut r, 101.0, &[("a", Verdict::Waiting)]), None);
    assert_eq!(run(&mut r, 102.0, &[("a", Verdict::Healthy)]), Some(Change::WaveHealthy(0)));
    assert_eq!(run(&mut r, 105.0, &[("a", Verdict::Healthy)]), None, "the wait is not over");
    assert_eq!(run(&mut r, 112.0, &[("a", Verdict::Healthy)]), Some(Change::WaveStarts(1)));
    assert!(r.serves("b") && r.serves("c") && !r.serves("d"));
    let all = [("a", Verdict::Healthy), ("b", Verdict::Healthy), ("c", Verdict::Healthy)];
    assert_eq!(run(&mut r, 113.0, &all[..2]), None, "c has not said");
    assert_eq!(run(&mut r, 113.0, &all), Some(Change::WaveHealthy(1)));
    assert_eq!(run(&mut r, 123.0, &all), Some(Change::WaveStarts(2)));
    let all = [all[0].clone(), all[1].clone(), all[2].clone(), ("d", Verdict::Healthy)];
    assert_eq!(run(&mut r, 124.0, &all), Some(Change::WaveHealthy(2)));
    assert_eq!(run(&mut r, 124.0, &all), Some(Change::Done), "no wait after the last wave");
    assert_eq!(r.state, State::Done);
    assert_eq!(run(&mut r, 200.0, &all), None);
    assert!(r.serves("anyone"), "done: every node gets it");
}

#[test]
fn a_failure_over_the_budget_or_a_missed_deadline_pauses_and_nothing_more_starts() {
    let mut r = rollout(vec![wave(&["a", "b"]), wave(&["c"])]);
    run(&mut r, 0.0, &[]);
    let failed = Verdict::Failed("unhealthy: manifest version 5 failed its health check".into());
    assert_eq!(
        run(&mut r, 1.0, &[("a", failed.clone()), ("b", Verdict::Healthy)]),
        Some(Change::Pause("1 failed (budget 0): a: unhealthy: manifest version 5 failed its health check".into()))
    );
    assert_eq!(r.state, State::Paused);
    assert!(!r.serves("c"));
    assert_eq!(run(&mut r, 1000.0, &[("a", Verdict::Healthy), ("b", Verdict::Healthy)]), None, "paused stays paused");

    let mut r = rollout(vec![wave(&["a", "b"]), wave(&["c"])]);
    r.budget = 1;
    run(&mut r, 0.0, &[]);
    assert_eq!(run(&mut r, 1.0, &[("a", failed.clone()), ("b", Verdict::Waiting)]), None, "within the budget");
    assert_eq!(run(&mut r, 59.0, &[("a", failed.clone()), ("b", Verdict::Waiting)]), None);
    let paused = run(&mut r, 61.0, &[("a", failed.clone()), ("b", Verdict::Waiting)]);
    assert!(
        matches!(&paused, Some(Change::Pause(why)) if why.contains("b: no healthy report on version 5 within 60 s")),
        "{paused:?}"
    );
}

#[test]
fn excused_nodes_do_not_count_and_a_received_node_keeps_its_version_after_an_abort() {
    let mut r = rollout(vec![wave(&["a", "b"]), wave(&["c"])]);
    run(&mut r, 0.0, &[]);
    r.received.insert("a".into());
    r.excused.insert("a".into());
    let failed = Verdict::Failed("rollback".into());
    assert_eq!(run(&mut r, 1.0, &[("a", failed.clone()), ("b", Verdict::Healthy)]), Some(Change::WaveHealthy(0)));
    r.state = State::Aborted;
    assert!(r.serves("a"), "a has N: it keeps getting it");
    assert!(!r.serves("b"), "b's wave started, but b never fetched N: an abort stops it");
    assert!(!r.serves("c"));
    assert_eq!(run(&mut r, 100.0, &[]), None);
}

#[test]
fn the_nodes_own_words_give_the_verdict_and_only_reports_after_the_start_count() {
    let applied = (10.0, "applied", "manifest version 5: 1 flists mounted, 2 services");
    let healthy = (11.0, "healthy", "manifest version 5 is healthy: web ready for 2 s");
    assert_eq!(verdict(Some(&said(&[applied, healthy])), 5, 5.0), Verdict::Healthy);
    assert_eq!(verdict(Some(&said(&[applied, healthy])), 5, 10.5), Verdict::Healthy);
    assert_eq!(verdict(Some(&said(&[applied, healthy])), 5, 12.0), Verdict::Waiting, "said before the wave started");
    assert_eq!(verdict(Some(&said(&[healthy])), 50, 0.0), Verdict::Waiting, "another version");
    assert_eq!(verdict(Some(&said(&[(11.0, "healthy", "manifest version 51 is healthy")])), 5, 0.0), Verdict::Waiting);
    let unhealthy = (12.0, "unhealthy", "manifest version 5 failed its health check: web exited");
    let back = (13.0, "rollback", "rolled back to manifest version 4: version 5 failed its health check: web exited");
    assert!(
        matches!(verdict(Some(&said(&[applied, unhealthy, back])), 5, 0.0), Verdict::Failed(w) if w.starts_with("rollback"))
    );
    assert!(
        matches!(verdict(Some(&said(&[applied, unhealthy])), 5, 0.0), Verdict::Failed(w) if w.starts_with("unhealthy"))
    );
    assert_eq!(verdict(Some(&said(&[(12.0, "unhealthy", "manifest version 15 failed")])), 5, 0.0), Verdict::Waiting);
    assert_eq!(verdict(None, 5, 0.0), Verdict::Waiting);
    // Hostile words: no panic, no verdict.
    for detail in ["", "manifest version ", "version", "manifest version 99999999999999999999999 is healthy", "\u{0}"] {
        assert_eq!(verdict(Some(&said(&[(1.0, "healthy", detail)])), 5, 0.0), Verdict::Waiting, "{detail:?}");
    }
}

#[test]
fn waves_split_the_fleet_by_group_and_share_and_every_node_lands_in_one() {
    let fleet: BTreeSet<String> = (0..20).map(|i| format!("n{i:02}")).collect();
    let mut groups = BTreeMap::new();
    groups.insert("canary".to_string(), ids(&["n03", "n07"]));
    let by_node: BTreeMap<String, BTreeSet<String>> = fleet
        .iter()
        .map(|n| (n.clone(), if groups["canary"].contains(n) { ids(&["canary"]) } else { BTreeSet::new() }))
        .collect();
    let specs = [WaveSpec::Group("canary".into()), WaveSpec::Percent(25), WaveSpec::Rest];
    let waves = plan_waves(&specs, &fleet, &by_node, 1);
    assert_eq!(waves[0].nodes, ids(&["n03", "n07"]));
    assert_eq!(waves[1].nodes.len(), 3, "25% of 20 is 5, counting the 2 canaries");
    assert_eq!(waves[2].nodes.len(), 15);
    let all: BTreeSet<String> = waves.iter().flat_map(|w| w.nodes.iter().cloned()).collect();
    assert_eq!(all, fleet);
    assert_eq!(waves.iter().map(|w| w.nodes.len()).sum::<usize>(), 20, "no node in two waves");
    let other = plan_waves(&specs, &fleet, &by_node, 2);
    assert_ne!(other[1].nodes, waves[1].nodes, "another rollout starts with other nodes");
    // Nodes no wave takes join the last; an empty fleet makes empty waves.
    let waves = plan_waves(&[WaveSpec::Group("none".into())], &fleet, &by_node, 1);
    assert_eq!(waves[0].nodes, fleet);
    assert!(plan_waves(&specs, &BTreeSet::new(), &by_node, 1).iter().all(|w| w.nodes.is_empty()));
    let mut r = rollout(plan_waves(&specs, &fleet, &by_node, 1));
    assert!(r.join("new") && !r.join("new") && r.waves[2].nodes.contains("new"));
}

#[test]
fn an_empty_wave_passes_at_once() {
    let mut r = rollout(vec![wave(&[]), wave(&["a"])]);
    r.wait = 0;
    assert_eq!(run(&mut r, 0.0, &[]), Some(Change::WaveStarts(0)));
    assert_eq!(run(&mut r, 0.0, &[]), Some(Change::WaveHealthy(0)));
    assert_eq!(run(&mut r, 0.0, &[]), Some(Change::WaveStarts(1)));
}

#[test]
fn wave_specs_and_plans_from_outside_are_bounded() {
    assert_eq!(WaveSpec::parse("group:canary"), Ok(WaveSpec::Group("canary".into())));
    assert_eq!(WaveSpec::parse("25%"), Ok(WaveSpec::Percent(25)));
    assert_eq!(WaveSpec::parse("100%"), Ok(WaveSpec::Rest));
    assert_eq!(WaveSpec::parse("rest"), Ok(WaveSpec::Rest));
    for bad in ["", "0%", "101%", "-1%", "%", "group:", "canary", "1e3%", "99999999999%"] {
        assert!(WaveSpec::parse(bad).is_err(), "{bad:?}");
    }
    let ok = Request {
        path: "manifest.json".into(),
        manifest: "{}".into(),
        signature: "ab".repeat(64),
        waves: vec![WaveSpec::Rest],
        wait: 0,
        deadline: 1,
        budget: 0,
    };
    assert_eq!(check_request(&ok), Ok(()));
    let bad = [
        Request { waves: vec![], ..ok.clone() },
        Request { waves: vec![WaveSpec::Rest; MAX_WAVES + 1], ..ok.clone() },
        Request { wait: u64::MAX, ..ok.clone() },
        Request { deadline: 0, ..ok.clone() },
        Request { deadline: MAX_SPAN + 1, ..ok.clone() },
        Request { signature: "zz".repeat(64), ..ok.clone() },
        Request { path: "../etc/passwd".into(), ..ok.clone() },
        Request { path: ".netboot/netboot.db".into(), ..ok.clone() },
        Request { path: String::new(), ..ok.clone() },
        Request { manifest: " ".repeat(MAX_MANIFEST + 1), ..ok.clone() },
    ];
    for req in bad {
        assert!(check_request(&req).is_err(), "{req:?}");
    }
}
