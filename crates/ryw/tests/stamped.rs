//! Writes stamped without being sent (`ReadYourWrites::stamp`), then sent later as the same write
//! (`SessionRequest::from_stamped`): what an outbox does while the store is down.

use ryw::{ReadYourWritesLayer, Session, SessionRequest};
use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
use tower::{Layer, Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_stamped_write_sent_later_applies_once_under_its_id() {
    let store = SimStore::new(SimConfig::default().seed(4));
    let mut svc = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let session = Session::new();

    let request = session.request(SimRequest::put("k", 7));
    let stamped = svc.stamp(&request).expect("a write");
    assert!(!stamped.may_have_applied);
    assert_eq!(stamped.write_id.session, session.id());
    assert_eq!(stamped.write_id.seq, 1);
    assert!(store.log().is_empty(), "nothing sent");
    // A read stamps nothing.
    assert!(svc.stamp(&session.request(SimRequest::get("k"))).is_none());
    // Stamping again is a new write: the session's next id.
    let again = svc
        .stamp(&session.request(SimRequest::put("j", 1)))
        .unwrap();
    assert_eq!(again.write_id.seq, 2);

    // Sent later, from a session rebuilt elsewhere: the same id; sent twice (a crash between the
    // apply and forgetting it), applied once.
    let elsewhere = Session::from_state(session.snapshot());
    for _ in 0..2 {
        let resent = SessionRequest::from_stamped(elsewhere.clone(), stamped.clone());
        let out = svc.ready().await.unwrap().call(resent).await.unwrap();
        assert_eq!(out.write_id(), Some(stamped.write_id));
    }
    let log = store.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].write_id, Some(stamped.write_id));

    // The request it came from, once sent and cloned, says how it was stamped.
    let sent = session.request(SimRequest::put("m", 3));
    let keep = sent.clone();
    svc.ready().await.unwrap().call(sent).await.unwrap();
    let seen = keep.stamped().expect("stamped when sent");
    assert_eq!(seen.write_id.seq, 3);
    assert_eq!(svc.stamp(&keep).unwrap(), seen, "already stamped: kept");

    // A response marked queued is not guaranteed.
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::get("k")))
        .await
        .unwrap()
        .queued(again.write_id);
    assert!(read.visibility().is_queued());
    assert!(!read.visibility().is_guaranteed());
}
