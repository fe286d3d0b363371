//! Overload against the real binary: twice as many simultaneous requests as the worker holds.
//! The excess is refused at once (503 + Retry-After), every accepted request ends with a
//! terminal event, and `/health` stays fast throughout.

use serde_json::json;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use worker_e2e::{SseStream, Worker, request};

const BATCH: usize = 2;
const QUEUE: usize = 2;
const CLIENTS: usize = 2 * (BATCH + QUEUE);

#[derive(Debug)]
enum Outcome {
    Completed,
    Refused(Duration),
}

#[test]
fn twice_the_capacity() {
    let dev = worker_e2e::device();
    let w = Worker::start(&[
        "--ctx-size",
        "512",
        "--device",
        &dev,
        "--max-batch",
        &BATCH.to_string(),
        "--max-queue",
        &QUEUE.to_string(),
    ]);
    let barrier = Barrier::new(CLIENTS);
    let done = AtomicBool::new(false);
    let (outcomes, health_ms) = std::thread::scope(|sc| {
        let health = sc.spawn(|| {
            let mut ms = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(request(&w.addr, "GET", "/health", &[], None).status, 200);
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(Duration::from_millis(10));
            }
            ms
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|k| {
                let (w, barrier) = (&w, &barrier);
                sc.spawn(move || {
                    let body = json!({"job_id": format!("load-{k}"), "prompt": "1, 2, 3,", "max_tokens": 12, "temperature": 0});
                    barrier.wait();
                    let t = Instant::now();
                    let s = SseStream::open(&w.addr, "/execute", &body);
                    if s.status == 503 {
                        assert!(s.headers.iter().any(|(k, _)| k == "retry-after"), "503 without Retry-After");
                        return Outcome::Refused(t.elapsed());
                    }
                    assert_eq!(s.status, 200);
                    let events = s.collect();
                    let last = events.last().expect("a terminal event");
                    assert_eq!(last.event, "end", "{last:?}");
                    assert_eq!(last.json()["stop_reason"], "MAX_TOKENS");
                    Outcome::Completed
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        (outcomes, health.join().unwrap())
    });

    let refused: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| {
            if let Outcome::Refused(d) = o {
                Some(*d)
            } else {
                None
            }
        })
        .collect();
    let completed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Completed))
        .count();
    assert_eq!(completed + refused.len(), CLIENTS);
    assert!(
        completed >= BATCH + QUEUE,
        "only {completed} of {CLIENTS} completed: {outcomes:?}"
    );
    for d in &refused {
        assert!(*d < Duration::from_millis(500), "a refusal took {d:?}");
    }
    if dev == "cpu" {
        // Jobs last seconds on the CPU, so all clients overlap: exactly the excess is refused.
        assert_eq!(refused.len(), CLIENTS - (BATCH + QUEUE), "{outcomes:?}");
    }
    let mut ms = health_ms;
    ms.sort_by(f64::total_cmp);
    assert!(!ms.is_empty());
    let p99 = ms[(ms.len() * 99 / 100).min(ms.len() - 1)];
    assert!(
        p99 < 50.0,
        "/health p99 {p99:.1} ms during the load ({} samples)",
        ms.len()
    );
    w.wait_until("the load to drain", Duration::from_secs(5), |w| {
        w.get("/health").json()["active_jobs"] == 0
    });
}
