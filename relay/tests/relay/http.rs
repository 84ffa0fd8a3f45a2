//! The plain HTTP side: health, metrics, and answers to wrong requests.

use cue_relay::Config;

use crate::util::*;

#[tokio::test]
async fn healthz_and_metrics_answer_without_naming_rooms_or_addresses() {
    let relay = TestRelay::start(Config::default()).await;
    assert_eq!(relay.get("/healthz").await, (200, "ok\n".to_owned()));
    let key = room_key(9);
    let mut a = join(&relay, &key).await;
    let mut b = join(&relay, &key).await;
    a.broadcast(1, b"x").await;
    assert_eq!(b.message().await.2, b"x");

    let (status, body) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "cue_relay_connections ",
        "cue_relay_peers 2",
        "cue_relay_rooms 1",
        "cue_relay_messages_in_total 1",
        "cue_relay_messages_out_total 1",
        "cue_relay_refusals_total{reason=\"room_full\"} 0",
        "cue_relay_rate_limit_hits_total{limit=\"messages\"} 0",
    ] {
        assert!(body.contains(name), "{name:?} missing from\n{body}");
    }
    assert!(!body.contains(&room_of(&key).to_string()));
    assert!(!body.contains("127.0.0.1"));
    for line in body.lines().filter(|line| !line.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<u64>().is_ok(), "bad sample line {line:?}");
    }

    assert_eq!(relay.get("/nope").await.0, 404);
    assert_eq!(relay.get("/v1/rooms/zz").await.0, 400);
    assert_eq!(relay.get(&room_of(&key).path()).await.0, 426);
    relay.stop().await;
}
