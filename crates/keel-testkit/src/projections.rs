//! The projection and inbox suite: a read model rebuilt by replay equals the live one;
//! rebuilds are blue/green (the live model answers throughout, a rebuild under live
//! traffic loses and doubles nothing, an interrupted one leaves the live model alone
//! and resumes or is discarded);
//! one runner per projection is active (it keeps its lease while it runs, stops when the
//! lease is lost, and a page whose checkpoint another writer moved is rolled back); and
//! the transactional inbox applies a redelivered event once (also across a crash
//! between the handler's commit and the ack). Each SQL store runs it through
//! [`crate::projection_conformance!`], with its own dialect for the statements that differ.

/// Expands to the projection and inbox cases for one SQL store.
///
/// - `db`: the sqlx database (`sqlx::Postgres`, `sqlx::Sqlite`);
/// - `log`: the store's event log type, and `fresh_log`: an expression making a new,
///   empty one;
/// - `inbox`: the store's inbox type (`new(pool)`);
/// - `upsert`: counts one event of stream `$1`/`?` at version `$2`/`?` into the
///   `counts (stream_id, events, last_version)` table, named `{counts}` (the runner
///   writes the generation's name: `counts`, or `counts__keel_next` in a rebuild);
/// - `insert_effect`: inserts event id `$1`/`?` into `effects (event_id)`;
/// - `break_lease`: an async fn `(&log, name)` that takes the lease `name` away from its
///   holder without the holder's doing, as a stall past the lease's expiry (SQLite) or
///   a lost connection (PostgreSQL) would.
///
/// The calling crate needs `async-trait`, `keel-bus`, `keel-core`, `keel-memory`,
/// `keel-store`, `serde_json`, `sqlx`, `tokio` and `tower` (its dev-dependencies).
#[macro_export]
macro_rules! projection_conformance {
    (
        db: $db:ty,
        log: $log:ty,
        fresh_log: $fresh_log:expr,
        inbox: $inbox:ty,
        upsert: $upsert:literal,
        insert_effect: $insert_effect:literal,
        break_lease: $break_lease:path $(,)?
    ) => {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        use async_trait::async_trait;
        use keel_bus::layer::inbox_fn;
        use keel_bus::{Consumer, HandlerError, Message};
        use keel_core::{CloudEvent, ExpectedVersion, StreamId, SubscriptionSpec};
        use keel_store::{
            Cursor, EventLog, Projection, ProjectionRunner, RebuildState, Rebuilt, SqlEventLog,
            StoreError, SubscribeOptions, Tables,
        };
        use $crate::util::{eventually, eventually_async, unique};

        /// Events per stream, as a read model.
        struct Counts;

        #[async_trait]
        impl Projection<$db> for Counts {
            fn name(&self) -> &str {
                "counts"
            }

            fn tables(&self) -> &[&str] {
                &["counts"]
            }

            async fn apply(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                tables: &Tables,
                event: &CloudEvent,
            ) -> Result<(), HandlerError> {
                sqlx::query(&tables.expand($upsert))
                    .bind(event.subject().unwrap_or_default())
                    .bind(event.stream_version().map_or(0, |v| i64::try_from(v.0).unwrap_or(0)))
                    .execute(conn)
                    .await
                    .map_err(HandlerError::transient)?;
                Ok(())
            }
        }

        /// [`Counts`], whose first apply moves the checkpoint `key` inside the
        /// runner's transaction, as another runner committing a page meanwhile would
        /// have.
        struct MovedUnderIt {
            log: Arc<$log>,
            key: String,
            moved: std::sync::atomic::AtomicBool,
        }

        #[async_trait]
        impl Projection<$db> for MovedUnderIt {
            fn name(&self) -> &str {
                "counts"
            }

            fn tables(&self) -> &[&str] {
                &["counts"]
            }

            async fn apply(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                tables: &Tables,
                event: &CloudEvent,
            ) -> Result<(), HandlerError> {
                if !self.moved.swap(true, Ordering::SeqCst) {
                    let elsewhere = Cursor { epoch: 0, txid: 0, position: 1_000_000 };
                    self.log
                        .save_checkpoint_in(&mut *conn, &self.key, elsewhere)
                        .await
                        .map_err(HandlerError::transient)?;
                }
                Counts.apply(conn, tables, event).await
            }
        }

        fn counts_key() -> String {
            ProjectionRunner::<$log, Counts>::checkpoint_name("counts")
        }

        async fn counts_table(log: &$log) {
            sqlx::query("CREATE TABLE counts (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL, last_version BIGINT NOT NULL)")
                .execute(SqlEventLog::pool(log))
                .await
                .expect("table");
        }

        /// Runs `runner` in a task until the returned sender fires (or is dropped).
        fn spawn_runner(
            runner: &Arc<ProjectionRunner<$log, Counts>>,
        ) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<keel_store::Result<()>>) {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let runner = runner.clone();
            let task = tokio::spawn(async move {
                runner
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
            });
            (stop, task)
        }

        async fn append_round(log: &$log, streams: &[StreamId], events: usize) {
            for n in 0..events {
                let s = &streams[n % streams.len()];
                log.append(s, ExpectedVersion::Any, &[event(u32::try_from(n).unwrap_or(0))])
                    .await
                    .expect("append");
            }
        }

        async fn counted(log: &$log) -> i64 {
            counts(log).await.iter().map(|(_, n, _)| n).sum::<i64>()
        }

        async fn counts(log: &$log) -> Vec<(String, i64, i64)> {
            sqlx::query_as("SELECT stream_id, events, last_version FROM counts ORDER BY stream_id")
                .fetch_all(SqlEventLog::pool(log))
                .await
                .expect("read model")
        }

        fn event(n: u32) -> CloudEvent {
            CloudEvent::builder("keel.test.n", "/keel/test")
                .json_data(&serde_json::json!({ "n": n }))
                .expect("json")
                .build()
                .expect("valid")
        }

        #[tokio::test]
        async fn a_rebuilt_read_model_equals_the_live_one() {
            let log = Arc::new($fresh_log);
            sqlx::query("CREATE TABLE counts (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL, last_version BIGINT NOT NULL)")
                .execute(SqlEventLog::pool(&*log))
                .await
                .expect("table");
            let runner = Arc::new(ProjectionRunner::new(log.clone(), Arc::new(Counts)));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let live = {
                let runner = runner.clone();
                tokio::spawn(async move {
                    runner
                        .run(async move {
                            let _ = stopped.await;
                        })
                        .await
                })
            };
            let streams: Vec<StreamId> =
                (0..6).map(|_| StreamId::new(unique("order")).expect("valid")).collect();
            for n in 0..30 {
                let s = &streams[n % streams.len()];
                log.append(s, ExpectedVersion::Any, &[event(u32::try_from(n).unwrap_or(0))])
                    .await
                    .expect("append");
            }
            eventually_async("the live projection to apply 30 events", || async {
                counts(&log).await.iter().map(|(_, n, _)| n).sum::<i64>() == 30
            })
            .await;
            let _ = stop.send(());
            live.await.expect("task").expect("runner");
            let live_model = counts(&log).await;
            assert_eq!(live_model.len(), 6);
            assert!(
                live_model.iter().all(|(_, events, last)| events == last),
                "each stream counted once, in order"
            );

            let mut reports = Vec::new();
            let rebuilt = runner.rebuild(|p| reports.push(p)).await.expect("rebuild");
            assert_eq!(rebuilt, Rebuilt { applied: 30, switched: true }, "no runner: it switched");
            assert_eq!(counts(&log).await, live_model, "rebuilt equals live");
            assert_eq!(reports.first().map(|p| p.applied), Some(0));
            assert_eq!(reports.last().map(|p| (p.applied, p.total)), Some((30, 30)));

            // The checkpoint moved with the read model: catching up again applies nothing.
            assert_eq!(runner.catch_up().await.expect("catch up"), 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_page_whose_checkpoint_was_moved_meanwhile_is_rolled_back() {
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let streams = [StreamId::new(unique("order")).expect("valid")];
            append_round(&log, &streams, 5).await;
            let projection =
                MovedUnderIt { log: log.clone(), key: counts_key(), moved: Default::default() };
            let runner = ProjectionRunner::new(log.clone(), Arc::new(projection));
            let result = runner.catch_up().await;
            assert!(
                matches!(result, Err(StoreError::CheckpointMoved { .. })),
                "the runner stops at a checkpoint another writer moved: {result:?}"
            );
            assert!(counts(&log).await.is_empty(), "the page is rolled back whole");
            assert_eq!(log.checkpoint(&counts_key()).await.expect("load"), None);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_running_projection_keeps_its_lease() {
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let runner = Arc::new(ProjectionRunner::new(log.clone(), Arc::new(Counts)));
            let (stop, task) = spawn_runner(&runner);
            eventually("the runner to be active", || runner.is_active()).await;
            // Idle for longer than an unrenewed lease lasts.
            let probe = log.try_lease(&unique("probe")).await.expect("lease").expect("free");
            let renew_interval = probe.renew_interval();
            probe.release().await;
            tokio::time::sleep(renew_interval * 4).await;
            // A rebuild beside the active runner does not take its lease: the runner
            // switches the generation in.
            let rebuilder = ProjectionRunner::new(log.clone(), Arc::new(Counts));
            let rebuild = rebuilder.rebuild(|_| {}).await.expect("rebuild");
            assert!(!rebuild.switched, "the rebuild took the active runner's lease");
            assert!(runner.is_active());
            rebuilder.wait_for_switch().await.expect("switched");
            assert_eq!(rebuilder.rebuild_state().await.expect("state"), None);
            assert!(runner.is_active());
            let _ = stop.send(());
            task.await.expect("task").expect("runner");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_runner_that_loses_its_lease_stops_until_it_gets_it_back() {
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let streams: Vec<StreamId> =
                (0..3).map(|_| StreamId::new(unique("order")).expect("valid")).collect();
            let options = SubscribeOptions {
                poll_interval: Duration::from_millis(50),
                ..SubscribeOptions::default()
            };
            let runner =
                Arc::new(ProjectionRunner::new(log.clone(), Arc::new(Counts)).options(options));
            let (stop, task) = spawn_runner(&runner);
            eventually("the runner to be active", || runner.is_active()).await;
            append_round(&log, &streams, 9).await;
            eventually_async("the runner to apply 9 events", || async { counted(&log).await == 9 })
                .await;

            // The lease is lost, and another process takes it. No event is appended:
            // the runner must notice on its own.
            $break_lease(&*log, &counts_key()).await;
            let deadline = tokio::time::Instant::now() + $crate::util::PATIENCE;
            let other = loop {
                if let Some(lease) = log.try_lease(&counts_key()).await.expect("lease") {
                    break lease;
                }
                assert!(tokio::time::Instant::now() < deadline, "nobody else got the lease");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            eventually("the runner to notice that it lost its lease", || !runner.is_active())
                .await;
            append_round(&log, &streams, 9).await;

            // The other process goes away: the runner takes over again and applies
            // everything once, in order.
            other.release().await;
            eventually("the runner to be active again", || runner.is_active()).await;
            eventually_async("the runner to apply 18 events", || async { counted(&log).await == 18 })
                .await;
            assert!(
                counts(&log).await.iter().all(|(_, events, last)| events == last),
                "each event applied once, in order"
            );
            let _ = stop.send(());
            task.await.expect("task").expect("runner");
        }

        #[tokio::test]
        async fn a_redelivered_event_is_applied_once() {
            let log = $fresh_log;
            let pool = SqlEventLog::pool(&log).clone();
            sqlx::query("CREATE TABLE effects (event_id TEXT NOT NULL)")
                .execute(&pool)
                .await
                .expect("table");
            let inbox = Arc::new(<$inbox>::new(pool.clone()));
            let calls = Arc::new(AtomicUsize::new(0));
            let counter = calls.clone();
            let handler = inbox_fn(
                inbox.clone(),
                move |message: Message, mut tx: sqlx::Transaction<'static, $db>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        sqlx::query($insert_effect)
                            .bind(message.event().id())
                            .execute(&mut *tx)
                            .await
                            .map_err(HandlerError::transient)?;
                        Ok(tx)
                    }
                },
            );

            let bus = Arc::new(keel_memory::MemoryBus::new());
            let topic = unique("inbox");
            // 1. The same event delivered twice.
            let twice = event(1);
            let consumer = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
                .start(handler.clone())
                .await
                .expect("subscribe");
            keel_core::Publisher::publish(&*bus, &topic, std::slice::from_ref(&twice))
                .await
                .expect("publish");
            keel_core::Publisher::publish(&*bus, &topic, std::slice::from_ref(&twice))
                .await
                .expect("publish");
            eventually("the first delivery", || calls.load(Ordering::SeqCst) >= 1).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            consumer.stop().await.expect("stop");
            assert!(inbox.contains("g", twice.id()).await.expect("inbox"));

            // 2. A crash between the handler's commit and the ack: the handler's transaction
            // commits, then the consumer dies without acknowledging.
            let crashed = event(2);
            let mut subscription =
                keel_core::Subscriber::subscribe(&*bus, SubscriptionSpec::new(&topic, "g"))
                    .await
                    .expect("subscribe");
            keel_core::Publisher::publish(&*bus, &topic, std::slice::from_ref(&crashed))
                .await
                .expect("publish");
            let delivery = subscription.next().await.expect("open").expect("delivery");
            let message = Message::new(
                delivery.event().expect("event").clone(),
                1,
                topic.as_str().into(),
                "g".into(),
            );
            tower::ServiceExt::oneshot(handler.clone(), message).await.expect("handler commits");
            drop(delivery);
            drop(subscription);
            // Redelivered to a new member, which finds it in the inbox.
            let consumer = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
                .start(handler)
                .await
                .expect("subscribe");
            tokio::time::sleep(Duration::from_millis(300)).await;
            consumer.stop().await.expect("stop");

            let effects: Vec<(String, i64)> = sqlx::query_as(
                "SELECT event_id, count(*) FROM effects GROUP BY event_id ORDER BY event_id",
            )
            .fetch_all(&pool)
            .await
            .expect("effects");
            let mut expected = vec![(twice.id().to_owned(), 1), (crashed.id().to_owned(), 1)];
            expected.sort();
            assert_eq!(effects, expected, "each event applied exactly once");
            assert_eq!(calls.load(Ordering::SeqCst), 2, "duplicates never reach the handler");
        }

        /// Placed orders' totals, from `keel.test.placed` events at version 2 (the
        /// `counts` table: stream_id = order, last_version = total in cents).
        struct PlacedTotals;

        #[async_trait]
        impl Projection<$db> for PlacedTotals {
            fn name(&self) -> &str {
                "placed-totals"
            }

            fn tables(&self) -> &[&str] {
                &["counts"]
            }

            async fn apply(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                tables: &Tables,
                event: &CloudEvent,
            ) -> Result<(), HandlerError> {
                if event.ty() != $crate::upcasting::PLACED {
                    return Ok(());
                }
                let placed: $crate::upcasting::PlacedV2 = event.decode()?;
                sqlx::query(&tables.expand($upsert))
                    .bind(placed.order)
                    .bind(placed.total_cents)
                    .execute(conn)
                    .await
                    .map_err(HandlerError::transient)?;
                Ok(())
            }
        }

        #[tokio::test]
        async fn a_projection_and_its_rebuild_see_old_versions_upcast() {
            use $crate::upcasting::{v1, PlacedV2};
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let s = StreamId::new(unique("placed")).expect("valid");
            let current = CloudEvent::from_event(&PlacedV2 { order: "o-3".into(), total_cents: 9 }, "/t")
                .expect("json")
                .build()
                .expect("valid");
            log.append(&s, ExpectedVersion::NoStream, &[v1("o-1", 12), v1("o-2", 3), current])
                .await
                .expect("append");
            let runner = ProjectionRunner::new(log.clone(), Arc::new(PlacedTotals));
            assert_eq!(runner.catch_up().await.expect("catch up"), 3);
            let want = vec![("o-1".to_owned(), 1, 1200), ("o-2".to_owned(), 1, 300), ("o-3".to_owned(), 1, 9)];
            assert_eq!(counts(&log).await, want, "the live projection sees v2");
            assert_eq!(runner.rebuild(|_| {}).await.expect("rebuild").applied, 3);
            assert_eq!(counts(&log).await, want, "replay into the projection sees v2");
        }

        /// The README's hand-written `order.placed` without an order id, and an event
        /// from a newer deployment: the default policy skips both, records them with
        /// their reasons, and the projection (and its rebuild) completes.
        #[tokio::test]
        async fn unreadable_events_are_skipped_recorded_and_rebuilt_past() {
            use $crate::upcasting::{v1, v3, PLACED};
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let s = StreamId::new(unique("placed")).expect("valid");
            let bad = CloudEvent::builder(PLACED, "/cli")
                .data("application/json", r#"{"total":12}"#)
                .build()
                .expect("valid envelope");
            let bad_id = bad.id().to_owned();
            let future = v3("o-2");
            let future_id = future.id().to_owned();
            log.append(&s, ExpectedVersion::NoStream, &[v1("o-1", 12), bad, future, v1("o-3", 3)])
                .await
                .expect("append");
            let runner = ProjectionRunner::new(log.clone(), Arc::new(PlacedTotals));
            assert_eq!(runner.catch_up().await.expect("catch up"), 4);
            let want = vec![("o-1".to_owned(), 1, 1200), ("o-3".to_owned(), 1, 300)];
            assert_eq!(counts(&log).await, want, "the readable events are applied");
            let key = "projection:placed-totals".to_owned();
            let check_skips = |skipped: Vec<keel_store::Skipped>| {
                let got: Vec<_> = skipped.iter().map(|s| (s.subscriber.as_str(), s.event_id.as_str(), s.event_type.as_str())).collect();
                assert_eq!(got, vec![(key.as_str(), bad_id.as_str(), PLACED), (key.as_str(), future_id.as_str(), PLACED)]);
                assert!(skipped[0].reason.contains("version 1 has no `order`"), "{}", skipped[0].reason);
                assert!(skipped[1].reason.contains("newer than the 2"), "{}", skipped[1].reason);
                assert!(skipped[0].position < skipped[1].position);
            };
            check_skips(log.skipped(None, 10).await.expect("skipped"));
            assert_eq!(log.skipped_counts().await.expect("counts"), vec![(key.clone(), 2)]);

            assert_eq!(runner.rebuild(|_| {}).await.expect("rebuild completes").applied, 4);
            assert_eq!(counts(&log).await, want, "the rebuild equals the live model");
            check_skips(log.skipped(Some(&key), 10).await.expect("skipped"));
            assert_eq!(log.skipped_counts().await.expect("counts"), vec![(key.clone(), 2)]);
        }
        /// [`PlacedTotals`] applying whole pages (`apply_batch`), counting how the
        /// runner called it.
        #[derive(Default)]
        struct BatchedTotals {
            batches: AtomicUsize,
            singles: AtomicUsize,
        }

        #[async_trait]
        impl Projection<$db> for BatchedTotals {
            fn name(&self) -> &str {
                "placed-totals"
            }

            fn tables(&self) -> &[&str] {
                &["counts"]
            }

            async fn apply(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                tables: &Tables,
                event: &CloudEvent,
            ) -> Result<(), HandlerError> {
                self.singles.fetch_add(1, Ordering::SeqCst);
                PlacedTotals.apply(conn, tables, event).await
            }

            async fn apply_batch(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                tables: &Tables,
                events: &[&CloudEvent],
            ) -> Result<(), HandlerError> {
                self.batches.fetch_add(1, Ordering::SeqCst);
                // Writes as it goes, so a page failing midway has written some rows.
                for event in events {
                    PlacedTotals.apply(&mut *conn, tables, event).await?;
                }
                Ok(())
            }
        }

        /// Pages go through `apply_batch`; one with events it cannot read is rolled
        /// back (the rows written before the bad event too) and applied event by event,
        /// which skips and records exactly the bad events.
        #[tokio::test]
        async fn a_batched_projection_applies_pages_and_finds_unreadable_events_one_by_one() {
            use $crate::upcasting::{v1, v3, PLACED};
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let s = StreamId::new(unique("placed")).expect("valid");
            let bad = CloudEvent::builder(PLACED, "/cli")
                .data("application/json", r#"{"total":12}"#)
                .build()
                .expect("valid envelope");
            let bad_id = bad.id().to_owned();
            log.append(&s, ExpectedVersion::NoStream, &[v1("o-1", 12), bad, v3("o-2"), v1("o-3", 3)])
                .await
                .expect("append");
            let projection = Arc::new(BatchedTotals::default());
            let runner = ProjectionRunner::new(log.clone(), projection.clone());
            assert_eq!(runner.catch_up().await.expect("catch up"), 4);
            let want = vec![("o-1".to_owned(), 1, 1200), ("o-3".to_owned(), 1, 300)];
            assert_eq!(counts(&log).await, want, "each readable event applied once");
            assert_eq!(projection.batches.load(Ordering::SeqCst), 1, "the page was tried whole");
            assert!(projection.singles.load(Ordering::SeqCst) >= 4, "then event by event");
            let skipped = log.skipped(None, 10).await.expect("skipped");
            assert_eq!(skipped.len(), 2, "{skipped:?}");
            assert_eq!(skipped[0].event_id, bad_id);

            // A clean page: one batch, no single applies.
            let singles = projection.singles.load(Ordering::SeqCst);
            log.append(&s, ExpectedVersion::Any, &[v1("o-4", 4), v1("o-5", 5)]).await.expect("append");
            assert_eq!(runner.catch_up().await.expect("catch up"), 2);
            assert_eq!(projection.batches.load(Ordering::SeqCst), 2);
            assert_eq!(projection.singles.load(Ordering::SeqCst), singles);
            assert_eq!(counts(&log).await.len(), 4);

            // A rebuild goes through the batches too, and ends where the live model is.
            let live = counts(&log).await;
            assert_eq!(runner.rebuild(|_| {}).await.expect("rebuild").applied, 6);
            assert_eq!(counts(&log).await, live);
            assert_eq!(projection.batches.load(Ordering::SeqCst), 3);
        }

        /// A rebuild while events flow and the live runner follows them: the live model
        /// answers throughout, the live runner switches the generation in, and the
        /// result equals a rebuild from scratch once the traffic stopped.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_rebuild_under_live_traffic_loses_and_doubles_nothing() {
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let options = SubscribeOptions {
                poll_interval: Duration::from_millis(50),
                batch_size: 7,
                ..SubscribeOptions::default()
            };
            let runner =
                Arc::new(ProjectionRunner::new(log.clone(), Arc::new(Counts)).options(options));
            let (stop, task) = spawn_runner(&runner);
            let streams: Vec<StreamId> =
                (0..5).map(|_| StreamId::new(unique("order")).expect("valid")).collect();
            append_round(&log, &streams, 50).await;
            eventually_async("the live runner to apply 50 events", || async { counted(&log).await == 50 })
                .await;

            let traffic = {
                let (log, streams) = (log.clone(), streams.clone());
                tokio::spawn(async move {
                    for n in 0..200 {
                        append_round(&log, &streams[n % 5..=n % 5], 1).await;
                        if n % 10 == 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            };
            let watcher = {
                let log = log.clone();
                tokio::spawn(async move {
                    // The live model answers, never empty, never shrinking.
                    let mut last = 0;
                    for _ in 0..100 {
                        let now = counted(&log).await;
                        assert!(now >= last.max(50), "the live model went from {last} to {now} events");
                        last = now;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            };
            let small_pages = SubscribeOptions { batch_size: 5, ..SubscribeOptions::default() };
            let rebuilder = ProjectionRunner::new(log.clone(), Arc::new(Counts)).options(small_pages);
            let rebuilt = rebuilder.rebuild(|_| {}).await.expect("rebuild");
            assert!(!rebuilt.switched, "the live runner holds the lease, so it switches");
            rebuilder.wait_for_switch().await.expect("switched");
            assert_eq!(rebuilder.rebuild_state().await.expect("state"), None);
            traffic.await.expect("traffic");
            watcher.await.expect("the live model answered throughout");
            eventually_async("the live runner to follow all 250 events after the switch", || async {
                counted(&log).await == 250
            })
            .await;
            let switched = counts(&log).await;
            assert!(
                switched.iter().all(|(_, events, last)| events == last),
                "each event applied once, in order: {switched:?}"
            );
            let _ = stop.send(());
            task.await.expect("task").expect("runner");

            // From scratch, with the traffic stopped and no live runner.
            let scratch = rebuilder.rebuild(|_| {}).await.expect("rebuild from scratch");
            assert_eq!(scratch, Rebuilt { applied: 250, switched: true });
            assert_eq!(counts(&log).await, switched, "the switched model equals a rebuild from scratch");
            assert_eq!(
                log.checkpoint(&counts_key()).await.expect("checkpoint"),
                Some(log.read_after(Cursor::START, &Default::default(), 1000).await.expect("read").events.last().expect("events").cursor),
                "the projection's checkpoint is the generation's, at the head"
            );
            assert_eq!(log.checkpoint("projection-rebuild:counts").await.expect("checkpoint"), None);
        }

        /// Runs `rebuilder`'s rebuild until it applied at least `events`, then drops it
        /// (as a killed process would leave it: its lease not released).
        async fn interrupt_rebuild<P: Projection<$db>>(rebuilder: &ProjectionRunner<$log, P>, events: u64) {
            let (progress, mut seen) = tokio::sync::watch::channel(0u64);
            tokio::select! {
                rebuilt = rebuilder.rebuild(move |p| { progress.send_replace(p.applied); }) => {
                    panic!("the rebuild finished before it was interrupted: {rebuilt:?}")
                }
                _ = seen.wait_for(|applied| *applied >= events) => {}
            }
        }

        /// The `counts` table, `events` appended round-robin to `streams` new streams,
        /// and the live model caught up on them; returns the model.
        async fn live_model(log: &Arc<$log>, streams: usize, events: usize) -> Vec<(String, i64, i64)> {
            counts_table(log).await;
            let streams: Vec<StreamId> =
                (0..streams).map(|_| StreamId::new(unique("order")).expect("valid")).collect();
            append_round(log, &streams, events).await;
            let live = ProjectionRunner::new(log.clone(), Arc::new(Counts));
            assert_eq!(live.catch_up().await.expect("catch up"), u64::try_from(events).expect("fits"));
            counts(log).await
        }

        /// Retries `rebuild` while the interrupted one's lease is still held.
        async fn rebuild_again<P: Projection<$db>>(
            rebuilder: &ProjectionRunner<$log, P>,
            progress: impl FnMut(keel_store::RebuildProgress) + Send,
        ) -> Rebuilt {
            let mut progress = progress;
            let deadline = tokio::time::Instant::now() + $crate::util::PATIENCE;
            loop {
                match rebuilder.rebuild(&mut progress).await {
                    Err(StoreError::LeaseHeld(_)) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    rebuilt => return rebuilt.expect("rebuild"),
                }
            }
        }

        /// An interrupted rebuild leaves the live model and its checkpoint as they
        /// were; running it again resumes from the generation's own checkpoint, and
        /// discarding drops the generation.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_interrupted_rebuild_leaves_the_live_model_and_resumes_or_is_discarded() {
            let log = Arc::new($fresh_log);
            let model = live_model(&log, 4, 60).await;
            let at = log.checkpoint(&counts_key()).await.expect("checkpoint");

            let pages = SubscribeOptions { batch_size: 5, ..SubscribeOptions::default() };
            let rebuilder = ProjectionRunner::new(log.clone(), Arc::new(Counts)).options(pages);
            interrupt_rebuild(&rebuilder, 20).await;
            assert_eq!(counts(&log).await, model, "the live model is untouched");
            assert_eq!(log.checkpoint(&counts_key()).await.expect("checkpoint"), at);
            assert_eq!(rebuilder.rebuild_state().await.expect("state"), Some(RebuildState::Building));
            assert!(log.checkpoint("projection-rebuild:counts").await.expect("checkpoint").is_some());

            let mut first = None;
            let resumed = rebuild_again(&rebuilder, |p| {
                first.get_or_insert(p.applied);
            })
            .await;
            assert!(first.is_some_and(|applied| applied >= 20), "resumed, not restarted: {first:?}");
            assert_eq!(resumed, Rebuilt { applied: 60, switched: true });
            assert_eq!(counts(&log).await, model);
            assert_eq!(log.checkpoint(&counts_key()).await.expect("checkpoint"), at);
            assert_eq!(rebuilder.rebuild_state().await.expect("state"), None);

            interrupt_rebuild(&rebuilder, 10).await;
            let deadline = tokio::time::Instant::now() + $crate::util::PATIENCE;
            let discarded = loop {
                match rebuilder.discard_rebuild().await {
                    Err(StoreError::LeaseHeld(_)) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    discarded => break discarded.expect("discard"),
                }
            };
            assert!(discarded, "there was a generation to discard");
            assert_eq!(rebuilder.rebuild_state().await.expect("state"), None);
            assert_eq!(log.checkpoint("projection-rebuild:counts").await.expect("checkpoint"), None);
            let shadow: Result<Vec<(String, i64, i64)>, _> =
                sqlx::query_as("SELECT stream_id, events, last_version FROM counts__keel_next")
                    .fetch_all(SqlEventLog::pool(&*log))
                    .await;
            assert!(shadow.is_err(), "the generation's table is dropped");
            assert_eq!(counts(&log).await, model);
            assert_eq!(log.checkpoint(&counts_key()).await.expect("checkpoint"), at);
        }

        /// A rebuild holds its lease, so a page of its generation's that meets a moved
        /// checkpoint met a former rebuild's page committed late (that rebuild crashed,
        /// or lost its lease, with the commit in flight). The page is rolled back and
        /// the rebuild resumes from the checkpoint as it is, applying nothing twice.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_rebuild_resumes_after_a_page_that_moved_its_checkpoint() {
            let log = Arc::new($fresh_log);
            let model = live_model(&log, 3, 30).await;

            let key = ProjectionRunner::<$log, Counts>::rebuild_checkpoint_name("counts");
            let projection = MovedUnderIt { log: log.clone(), key, moved: Default::default() };
            let pages = SubscribeOptions { batch_size: 10, ..SubscribeOptions::default() };
            let rebuilder = ProjectionRunner::new(log.clone(), Arc::new(projection)).options(pages);
            let rebuilt = rebuilder.rebuild(|_| {}).await;
            assert_eq!(
                rebuilt.expect("the rebuild resumes rather than fail"),
                Rebuilt { applied: 30, switched: true }
            );
            assert_eq!(counts(&log).await, model, "nothing applied twice, nothing lost");
            assert_eq!(rebuilder.rebuild_state().await.expect("state"), None);
        }

        /// The README's bad publish (an `order.placed` that does not decode), then a
        /// rebuild beside the live runner: the live model answers during and after, the
        /// policy records the bad event (under the projection's name once switched),
        /// and the rebuild completes without loss.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_rebuild_past_a_bad_event_keeps_the_live_model_answering() {
            use $crate::upcasting::{v1, PLACED};
            let log = Arc::new($fresh_log);
            counts_table(&log).await;
            let s = StreamId::new(unique("placed")).expect("valid");
            let bad = CloudEvent::builder(PLACED, "/cli")
                .data("application/json", r#"{"total":12}"#)
                .build()
                .expect("valid envelope");
            let bad_id = bad.id().to_owned();
            let mut events: Vec<CloudEvent> =
                (0..40).map(|n| v1(&format!("o-{n:02}"), 1 + n)).collect();
            events.insert(20, bad);
            log.append(&s, ExpectedVersion::NoStream, &events).await.expect("append");
            let options = SubscribeOptions { poll_interval: Duration::from_millis(50), ..SubscribeOptions::default() };
            let runner = Arc::new(ProjectionRunner::new(log.clone(), Arc::new(PlacedTotals)).options(options));
            let (stop, task) = {
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let runner = runner.clone();
                let task = tokio::spawn(async move { runner.run(async move { let _ = stopped.await; }).await });
                (stop, task)
            };
            eventually_async("the live model to apply the 40 good events", || async {
                counts(&log).await.len() == 40
            })
            .await;
            let model = counts(&log).await;
            let key = "projection:placed-totals";
            let skipped = |subscriber: &'static str| {
                let log = log.clone();
                async move {
                    log.skipped(Some(subscriber), 10).await.expect("skipped").into_iter().map(|s| s.event_id).collect::<Vec<_>>()
                }
            };
            assert_eq!(skipped(key).await, vec![bad_id.clone()]);

            let watcher = {
                let log = log.clone();
                let model = model.clone();
                tokio::spawn(async move {
                    for _ in 0..50 {
                        assert_eq!(counts(&log).await, model, "the live model answers, whole");
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            };
            let pages = SubscribeOptions { batch_size: 3, ..SubscribeOptions::default() };
            let rebuilder = ProjectionRunner::new(log.clone(), Arc::new(PlacedTotals)).options(pages);
            let rebuilt = rebuilder.rebuild(|_| {}).await.expect("the rebuild completes");
            assert_eq!(rebuilt.applied, 41);
            rebuilder.wait_for_switch().await.expect("switched");
            watcher.await.expect("the live model answered during the rebuild");
            assert_eq!(counts(&log).await, model, "the switched model lost nothing");
            assert_eq!(skipped(key).await, vec![bad_id], "the policy's record is the projection's");
            assert!(skipped("projection-rebuild:placed-totals").await.is_empty());
            assert_eq!(log.skipped_counts().await.expect("counts"), vec![(key.to_owned(), 1)]);
            let _ = stop.send(());
            task.await.expect("task").expect("runner");
        }
    };
}
