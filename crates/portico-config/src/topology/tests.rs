use std::time::Duration;

use super::*;
use crate::EndpointMode;

/// Two regions, two PoPs, two sites: `near` close to `pop-a`, `far` far from the
/// origin of `r1`.
const TWO: &str = r#"[topology]
name = "two"
base_port = 20000

[[regions]]
name = "r1"
location = "Here"
origin = "origin-1"
backends = ["backend-1"]

[[regions]]
name = "r2"
origin = "origin-2"
backends = ["backend-2a", "backend-2b"]

[[pops]]
id = "pop-a"
location = "Near"
regions = ["r1", "r2"]

[[pops]]
id = "pop-b"
regions = ["r1"]

[[sites]]
name = "near"

[[sites]]
name = "far"
location = "Far away"

[[links]]
between = ["near", "pop-a"]
delay_ms = 2

[[links]]
between = ["far", "pop-a"]
delay_ms = 30

[[links]]
between = ["far", "pop-b"]
delay_ms = 5.5
jitter_ms = 0.5
loss = 0.01
bandwidth_mbps = 100

[[links]]
between = ["pop-a", "origin-1"]
delay_ms = 10

[[links]]
between = ["pop-b", "origin-1"]
delay_ms = 40

[[links]]
between = ["pop-a", "origin-2"]

[[links]]
between = ["near", "origin-1"]
delay_ms = 12

[[links]]
between = ["far", "origin-1"]
delay_ms = 45

[[links]]
between = ["origin-2", "backend-2b"]
delay_ms = 1

[[apis]]
name = "e1"
endpoint = "edge"
region = "r1"

[[apis]]
name = "g1"
endpoint = "regional"
region = "r1"
stage = "beta"

[[apis]]
name = "e2"
endpoint = "edge"
region = "r2"
backend = "backend-2b"
"#;

fn parse(text: &str) -> Result<Topology, ConfigErrors> {
    parse_topology(text, "t.toml", "t")
}

/// The errors of `text` as `line:column: message`.
fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect(),
    }
}

fn ok() -> Topology {
    parse(TWO).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_valid_topology_resolves_every_name() {
    let t = ok();
    assert_eq!((t.name.as_str(), t.file.as_str()), ("two", "t.toml"));
    assert_eq!(t.regions[1].backends, ["backend-2a", "backend-2b"]);
    assert_eq!(t.pops[0].regions, [0, 1]);
    assert_eq!(t.apis[1].stage, "beta");
    assert_eq!(t.apis[0].stage, "prod");
    assert_eq!(t.apis[2].backend, 1);
    assert_eq!(t.apis[0].endpoint, EndpointMode::Edge);
    let far_pop_b = t.link(Place::Site(1), Place::Pop(1)).unwrap().params;
    assert_eq!(far_pop_b.delay, Duration::from_micros(5500));
    assert_eq!(far_pop_b.jitter, Duration::from_micros(500));
    assert_eq!(
        (far_pop_b.loss, far_pop_b.bandwidth_bps),
        (0.01, Some(100_000_000))
    );
    assert_eq!(
        TopologySummary::of(&t).to_string(),
        "topology `two`: 2 region(s), 2 PoP(s), 2 client site(s), 9 link(s), 3 API(s), \
         6 entry point(s)"
    );
}

#[test]
fn entries_pick_the_nearest_pop_of_the_region_or_the_origin() {
    let t = ok();
    let node = |site, api| t.entry(site, api).unwrap().node;
    assert_eq!(node(0, 0), Place::Pop(0));
    assert_eq!(node(1, 0), Place::Pop(1), "far is nearer pop-b");
    assert_eq!(node(1, 1), Place::Origin(0));
    assert_eq!(node(1, 2), Place::Pop(0), "only pop-a serves r2");
    let ports: Vec<_> = t.entries.iter().map(|e| e.port.unwrap()).collect();
    assert_eq!(ports, [20000, 20001, 20002, 20003, 20004, 20005]);
    let path = t.path(t.entry(1, 0).unwrap());
    assert_eq!(
        path,
        [
            (Place::Site(1), Place::Pop(1)),
            (Place::Pop(1), Place::Origin(0)),
            (
                Place::Origin(0),
                Place::Backend {
                    region: 0,
                    index: 0
                }
            ),
        ]
    );
    assert_eq!(
        t.params(
            Place::Origin(0),
            Place::Backend {
                region: 0,
                index: 0
            }
        )
        .rtt(),
        Duration::ZERO
    );
    let undeclared = t.params(
        Place::Origin(0),
        Place::Backend {
            region: 0,
            index: 0,
        },
    );
    assert!(undeclared.is_ideal(), "an undeclared link is ideal");
    assert!(!t.params(Place::Site(1), Place::Pop(1)).is_ideal());
    assert_eq!(
        t.place_name(Place::Backend {
            region: 1,
            index: 1
        }),
        "backend-2b"
    );
}

#[test]
fn is_topology_looks_at_top_level_sections() {
    assert!(is_topology(TWO));
    assert!(is_topology("[[sites]]\nname = \"x\"\n[broken"));
    assert!(!is_topology("[node]\nid = \"o\"\n[[apis]]\nname = \"a\"\n"));
}

#[test]
fn a_pop_homed_in_an_unknown_region_is_refused() {
    let text = TWO.replace("regions = [\"r1\"]\n", "regions = [\"r9\"]\n");
    assert_eq!(
        errors(&text),
        ["23:12: PoP `pop-b` is homed in unknown region `r9`"]
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.0[0].expected.as_deref(), Some("one of `r1`, `r2`"));
}

#[test]
fn a_link_between_unknown_places_is_refused() {
    let text = TWO.replace("[\"near\", \"pop-a\"]", "[\"nowhere\", \"pop-z\"]");
    assert_eq!(
        errors(&text),
        [
            "33:12: link between unknown place `nowhere`",
            "33:23: link between unknown place `pop-z`"
        ]
    );
}

#[test]
fn negative_delays_and_jitter_are_refused() {
    let text = TWO
        .replace("delay_ms = 2\n", "delay_ms = -2\n")
        .replace("jitter_ms = 0.5", "jitter_ms = -0.5");
    assert_eq!(
        errors(&text),
        [
            "34:12: delay_ms must be a non-negative number of milliseconds, got -2",
            "43:13: jitter_ms must be a non-negative number of milliseconds, got -0.5",
        ]
    );
    let text = TWO.replace("delay_ms = 2\n", "delay_ms = nan\n");
    assert_eq!(
        errors(&text),
        ["34:12: delay_ms must be a non-negative number of milliseconds, got NaN"]
    );
    let text = TWO.replace("delay_ms = 2\n", "delay_ms = 4000000\n");
    assert_eq!(
        errors(&text),
        ["34:12: delay_ms must be at most 3600000 ms (one hour), got 4000000"]
    );
}

#[test]
fn a_loss_rate_above_one_is_refused() {
    let text = TWO.replace("loss = 0.01", "loss = 1.5");
    assert_eq!(
        errors(&text),
        ["44:8: loss must be a probability within 0.0..=1.0, got 1.5"]
    );
    let text = TWO.replace("loss = 0.01", "loss = -0.01");
    assert_eq!(
        errors(&text),
        ["44:8: loss must be a probability within 0.0..=1.0, got -0.01"]
    );
}

#[test]
fn bad_bandwidth_is_refused() {
    let text = TWO.replace("bandwidth_mbps = 100", "bandwidth_mbps = 0");
    assert_eq!(
        errors(&text),
        [
            "45:18: bandwidth_mbps must be a positive number of megabits per second \
          (at most 1000000), got 0"
        ]
    );
}

#[test]
fn links_that_carry_no_traffic_are_refused() {
    let extra = "[[links]]\nbetween = [\"near\", \"far\"]\n\
                 [[links]]\nbetween = [\"origin-1\", \"backend-2a\"]\n\
                 [[links]]\nbetween = [\"pop-a\", \"pop-a\"]\n\
                 [[links]]\nbetween = [\"pop-a\"]\n\
                 [[links]]\nbetween = [\"origin-1\", \"far\"]\n";
    let text = format!("{TWO}{extra}");
    assert_eq!(
        errors(&text),
        [
            "87:11: no traffic flows between a client site and a client site",
            "89:11: no traffic flows between an origin and a backend",
            "91:11: a link joins two different places",
            "93:11: a link joins exactly two places, not 1",
            "95:11: duplicate link between `origin-1` and `far` (first at line 63)",
        ]
    );
}

#[test]
fn duplicate_and_invalid_names_are_refused() {
    let text = TWO
        .replace("name = \"far\"", "name = \"pop-b\"")
        .replace("name = \"e2\"", "name = \"g1\"")
        .replace("backends = [\"backend-1\"]", "backends = [\"Backend 1\"]");
    assert_eq!(
        errors(&text),
        [
            "9:13: invalid backend name `Backend 1`",
            "29:8: duplicate name `pop-b`: already the PoP at line 22",
            "37:12: link between unknown place `far`",
            "41:12: link between unknown place `far`",
            "63:12: link between unknown place `far`",
            "82:8: duplicate API `g1` (first at line 76)",
        ]
    );
}

/// `ca` would name a node's certificate files as the CA's (`ca.pem`).
#[test]
fn a_node_may_not_be_called_ca() {
    let text = TWO.replace("\"pop-a\"", "\"ca\"");
    assert_eq!(errors(&text), ["17:6: invalid PoP name `ca`"]);
    let text = TWO.replace("\"near\"", "\"ca\"");
    assert_eq!(errors(&text), Vec::<String>::new(), "a client site may");
}

#[test]
fn sites_without_a_way_in_are_refused() {
    let text = TWO.replace("[[links]]\nbetween = [\"pop-a\", \"origin-2\"]\n", "");
    assert_eq!(
        errors(&text),
        ["19:18: PoP `pop-a` is homed in region `r2` but has no link to its origin `origin-2`"]
    );
    let text = TWO.replace(
        "[[links]]\nbetween = [\"far\", \"origin-1\"]\ndelay_ms = 45\n",
        "",
    );
    assert_eq!(
        errors(&text),
        [
            "29:8: client site `far` has no link to origin `origin-1` (needed to enter \
             regional API `g1`)"
        ]
    );
    let text = TWO.replace(
        "[[links]]\nbetween = [\"near\", \"pop-a\"]\ndelay_ms = 2\n",
        "",
    );
    assert_eq!(
        errors(&text),
        [
            "26:8: client site `near` has no link to a PoP homed in region `r1` (needed to \
             enter edge API `e1`)",
            "26:8: client site `near` has no link to a PoP homed in region `r2` (needed to \
             enter edge API `e2`)",
        ]
    );
}

#[test]
fn api_references_are_checked() {
    let text = TWO
        .replace(
            "region = \"r1\"\nstage = \"beta\"",
            "region = \"r7\"\nstage = \"beta\"",
        )
        .replace("backend = \"backend-2b\"", "backend = \"backend-1\"");
    assert_eq!(
        errors(&text),
        [
            "78:10: API `g1` is in unknown region `r7`",
            "85:11: API `e2` uses backend `backend-1`, which is not a backend of region `r2`",
        ]
    );
    let text = TWO.replace(
        "endpoint = \"regional\"\nregion = \"r1\"\n",
        "endpoint = \"regional\"\n",
    );
    assert_eq!(
        errors(&text),
        ["76:8: API `g1` needs a `region`: the topology has several"]
    );
}

#[test]
fn base_port_must_leave_room_for_every_entry() {
    let text = TWO.replace("base_port = 20000", "base_port = 65533");
    assert_eq!(
        errors(&text),
        ["3:13: base_port 65533 leaves no room for 6 entry point(s) (ports 65533..=65538)"]
    );
    let t = parse(&TWO.replace("base_port = 20000\n", "")).unwrap();
    assert!(t.base_port.is_none() && t.entries.iter().all(|e| e.port.is_none()));
    let base = ok().base_port.unwrap();
    assert_eq!((base.port, base.line, base.column), (20000, 3, 13));
}

#[test]
fn unknown_keys_and_sections_are_refused_in_every_element() {
    let text = format!("{TWO}[[sites]]\nname = \"x\"\ncolour = 1\n[cache]\n")
        .replace("delay_ms = 10\n", "delay = 10\n");
    assert_eq!(
        errors(&text),
        [
            "49:1: unknown field `delay`",
            "88:1: unknown field `colour`",
            "89:2: unknown section `cache`",
        ]
    );
}

#[test]
fn broken_elements_are_not_reported_again_as_unknown() {
    let text = TWO.replace("id = \"pop-b\"\n", "id = \"pop-b\"\ncity = \"x\"\n");
    assert_eq!(errors(&text), ["23:1: unknown field `city`"]);
}

#[test]
fn empty_topologies_say_what_is_missing() {
    assert_eq!(
        errors("[topology]\nname = \"x\"\n"),
        [
            "1:1: a topology needs at least one region",
            "1:1: a topology needs at least one client site",
            "1:1: a topology needs at least one API",
        ]
    );
}

#[test]
fn the_example_topologies_are_valid() {
    for (name, text) in [
        ("local", include_str!("../../../../topology/local.toml")),
        ("world", include_str!("../../../../topology/world.toml")),
    ] {
        let t = parse_topology(text, name, name).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.entries.is_empty());
    }
}

#[test]
fn demo_limits_are_checked_like_a_node_files() {
    let text = TWO.replace(
        "name = \"e1\"\nendpoint = \"edge\"\n",
        "name = \"e1\"\nendpoint = \"edge\"\nlimited = { rate = -1, burst = 5 }\nkeyed = { limit = 100, period = \"YEAR\" }\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(
        errs[0], "73:20: throttle rate -1 is out of range",
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("74:") && errs[1].contains("unknown quota period `YEAR`"),
        "{errs:?}"
    );
    let good = TWO.replace(
        "name = \"e1\"\nendpoint = \"edge\"\n",
        "name = \"e1\"\nendpoint = \"edge\"\nlimited = { rate = 5, burst = 5 }\nkeyed = { limit = 100, period = \"DAY\" }\n",
    );
    let t = parse(&good).unwrap();
    let e1 = t.apis.iter().find(|a| a.name == "e1").unwrap();
    assert_eq!(e1.limited.map(|r| (r.rate, r.burst)), Some((5.0, 5)));
    assert_eq!(e1.keyed.map(|q| q.limit), Some(100));
}
