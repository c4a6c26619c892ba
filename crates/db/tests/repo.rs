//! Repository tests, each run against both PostgreSQL and SQLite.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::events::{ImageStatus, RedactionCount};
use common::tenancy::{CustomerStatus, Scopes, Tier, UsageMonth};
use common::time_util::now_micros;
use common::{Embedding, Episode, EpisodeFields, EpisodeId, TenantId, VectorId};
use db::{
    Backend, Db, DbConfig, DbError, Deletion, EpisodeCursor, EpisodeFilter, FeedbackCounts,
    InsertOutcome, NewApiKey, NewCapture, NewFeedback, NewTenant, Reservation, ScreenshotInfo,
    StoredEpisode, TenantPatch,
};
use test_support::db::TestDb;

/// Generates `mod $name { postgres, sqlite }`: the same async body on a fresh database of each
/// backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let t = test_support::db::TestDb::postgres().await;
                    super::$name(&t.db).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let t = test_support::db::TestDb::sqlite().await;
                    super::$name(&t.db).await;
                }
            }
        )*
    };
}

on_both_backends!(
    migrations_are_idempotent,
    tenant_and_key_round_trip,
    revoked_key_is_visible,
    reserve_capture_race_has_one_winner,
    reserve_capture_without_key,
    episode_insert_is_idempotent,
    get_episode_is_tenant_scoped,
    embeddings_round_trip_bit_exactly,
    scan_visits_every_row_once,
    concurrent_inserts_succeed,
    list_pages_newest_first_with_filters,
    delete_tombstones_once_and_is_tenant_scoped,
    purge_removes_what_raced_a_deletion,
    feedback_is_counted_per_tenant_and_dies_with_the_episode,
    customers_are_created_listed_and_patched,
    capture_quota_is_never_exceeded_under_concurrency,
    usage_and_quota_warnings_are_per_month,
    audit_log_pages_and_filters_by_customer,
);

async fn customers_are_created_listed_and_patched(db: &Db) {
    let a = db
        .create_customer(NewTenant {
            contact_email: Some("ops@acme.example".into()),
            tier: Tier::Pro,
            region: "eu-west-1".into(),
            ..NewTenant::named("acme")
        })
        .await
        .expect("create");
    assert_eq!(db.get_tenant(a.id).await.expect("get"), Some(a.clone()));
    assert_eq!((a.tier, a.status), (Tier::Pro, CustomerStatus::Active));
    let b = db.create_tenant("beta").await.expect("create");
    assert_eq!(b.tier, Tier::Enterprise);
    let all = db.list_customers(None, 10, None).await.expect("list");
    assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), [a.id, b.id]);
    let page = db.list_customers(Some(a.id), 10, None).await.expect("list");
    assert_eq!(page.iter().map(|t| t.id).collect::<Vec<_>>(), [b.id]);

    let patched = db
        .update_customer(
            a.id,
            &TenantPatch {
                status: Some(CustomerStatus::Suspended),
                contact_email: Some(None),
                ..TenantPatch::default()
            },
        )
        .await
        .expect("update")
        .expect("present");
    assert_eq!(patched.status, CustomerStatus::Suspended);
    assert_eq!(patched.contact_email, None);
    assert_eq!(patched.tier, Tier::Pro);
    assert!(patched.updated_at >= a.updated_at);
    assert_eq!(db.get_tenant(a.id).await.expect("get"), Some(patched));
    let suspended = db
        .list_customers(None, 10, Some(CustomerStatus::Suspended))
        .await
        .expect("list");
    assert_eq!(suspended.iter().map(|t| t.id).collect::<Vec<_>>(), [a.id]);
    assert_eq!(
        db.update_customer(TenantId::new(), &TenantPatch::default())
            .await
            .expect("update"),
        None
    );
}

async fn capture_quota_is_never_exceeded_under_concurrency(db: &Db) {
    let t = db.create_tenant("quota").await.expect("tenant");
    let month: UsageMonth = "2026-11".parse().expect("month");
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.admit_capture(t.id, month, Some(25)).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        if task.await.expect("task").expect("admit").admitted {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 25);
    let usage = db.usage(t.id, month).await.expect("usage").expect("row");
    assert_eq!(usage.episodes_captured, 25);
    let refused = db
        .admit_capture(t.id, month, Some(25))
        .await
        .expect("admit");
    assert_eq!((refused.admitted, refused.count), (false, 25));
    db.release_capture(t.id, month).await.expect("release");
    let again = db
        .admit_capture(t.id, month, Some(25))
        .await
        .expect("admit");
    assert_eq!((again.admitted, again.count), (true, 25));
    // No limit: always admitted.
    let free = db.admit_capture(t.id, month, None).await.expect("admit");
    assert_eq!((free.admitted, free.count), (true, 26));
}

async fn usage_and_quota_warnings_are_per_month(db: &Db) {
    let t = db.create_tenant("usage").await.expect("tenant");
    let nov: UsageMonth = "2026-11".parse().expect("month");
    let dec: UsageMonth = "2026-12".parse().expect("month");
    db.add_usage(t.id, nov, 3, 2).await.expect("add");
    db.add_usage(t.id, nov, 1, 0).await.expect("add");
    db.add_usage(t.id, dec, 0, 5).await.expect("add");
    let n = db.usage(t.id, nov).await.expect("usage").expect("row");
    assert_eq!((n.searches, n.gates, n.episodes_captured), (4, 2, 0));
    assert_eq!(
        db.usage_history(t.id)
            .await
            .expect("history")
            .iter()
            .map(|u| u.month)
            .collect::<Vec<_>>(),
        [dec, nov]
    );
    assert!(db.raise_quota_warning(t.id, nov, 80).await.expect("warn"));
    assert!(!db.raise_quota_warning(t.id, nov, 80).await.expect("warn"));
    assert!(db.raise_quota_warning(t.id, nov, 100).await.expect("warn"));
    assert!(db.raise_quota_warning(t.id, dec, 80).await.expect("warn"));
    assert_eq!(db.usage(TenantId::new(), nov).await.expect("usage"), None);
}

async fn audit_log_pages_and_filters_by_customer(db: &Db) {
    let a = db.create_tenant("a").await.expect("tenant");
    let b = db.create_tenant("b").await.expect("tenant");
    let mut ids = Vec::new();
    for (i, tenant) in [Some(a.id), Some(b.id), None, Some(a.id)]
        .into_iter()
        .enumerate()
    {
        let mut entry =
            db::AuditEntry::new(tenant, "admin", "key.create", format!("k{i}"), "success");
        entry.details = Some(serde_json::json!({"i": i}));
        entry.request_id = Some(format!("req-{i}"));
        db.append_audit(&entry).await.expect("append");
        ids.push(entry.id);
        // UUIDv7 orders by millisecond; keep the entries in distinct milliseconds.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all = db.list_audit(None, None, 10).await.expect("list");
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[0].details, Some(serde_json::json!({"i": 0})));
    let only_a = db.list_audit(Some(a.id), None, 10).await.expect("list");
    assert_eq!(
        only_a.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
        ["k0", "k3"]
    );
    let page = db.list_audit(None, Some(ids[1]), 2).await.expect("list");
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..4]);
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR fake but sniffable";

fn episode(goal: &str, screenshot: bool) -> Episode {
    use base64::Engine as _;
    Episode::parse(EpisodeFields {
        goal: Some(goal.to_owned()),
        actions_taken: vec!["cargo build".into(), "cargo test".into()],
        error_trace: "error[E0599]: no method named `foo`".into(),
        error_class: Some("dependency_error".into()),
        tool_chain: vec!["cargo".into(), "rustc".into()],
        environment: [("os".to_owned(), "linux".to_owned())].into(),
        resolution: Some("pin the crate".into()),
        tags: vec!["rust".into()],
        screenshot: screenshot.then(|| base64::engine::general_purpose::STANDARD.encode(PNG)),
        code_state_diff: Some("- a\n+ b".into()),
        episode_type: None,
    })
    .expect("valid episode")
}

/// A pseudo-random unit vector (deterministic per seed).
fn embedding(seed: u64, dim: usize) -> Embedding {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values = (0..dim)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Embedding::new(values).expect("valid embedding")
}

/// What reading `e` back must give. `Embedding::from_le_bytes` re-normalises, and dividing
/// an (already unit) vector by its recomputed f32 norm can move the last bit of some values,
/// so the database must reproduce exactly what `common`'s own byte round trip gives. Once
/// `common` keeps unit vectors as they are, this is `e` itself, bit for bit.
fn read_back(e: &StoredEpisode) -> StoredEpisode {
    let via_bytes =
        |v: &Embedding| Embedding::from_le_bytes(&v.to_le_bytes()).expect("valid bytes");
    StoredEpisode {
        text_embedding: via_bytes(&e.text_embedding),
        image_embedding: e.image_embedding.as_ref().map(via_bytes),
        ..e.clone()
    }
}

fn stored(tenant: TenantId, seed: u64) -> StoredEpisode {
    let id = EpisodeId::new();
    let with_image = seed.is_multiple_of(2);
    StoredEpisode {
        id,
        tenant_id: tenant,
        vector_id: VectorId::for_episode(tenant, id),
        episode: episode(&format!("goal {seed}"), with_image),
        text_embedding: embedding(seed, common::TEXT_DIM),
        text_model: "all-MiniLM-L6-v2".into(),
        image_status: if with_image {
            ImageStatus::Embedded
        } else {
            ImageStatus::None
        },
        image_embedding: with_image.then(|| embedding(seed + 1, common::IMAGE_DIM)),
        image_model: with_image.then(|| "clip-vit-b-32".to_owned()),
        redactions: vec![RedactionCount {
            kind: "email".into(),
            count: 2,
        }],
        captured_at: now_micros(),
        stored_at: now_micros(),
    }
}

async fn migrations_are_idempotent(db: &Db) {
    // TestDb already migrated: nothing is pending, twice over.
    assert_eq!(db.migrate().await.expect("migrate"), Vec::<String>::new());
    assert_eq!(db.migrate().await.expect("migrate"), Vec::<String>::new());
    db.health().await.expect("healthy");
}

async fn tenant_and_key_round_trip(db: &Db) {
    let tenant = db.create_tenant("acme").await.expect("create tenant");
    assert_eq!(
        db.get_tenant(tenant.id).await.expect("get"),
        Some(tenant.clone())
    );
    assert_eq!(db.get_tenant(TenantId::new()).await.expect("get"), None);

    let key = NewApiKey {
        key_id: format!("em_{}", EpisodeId::new().as_uuid().simple()),
        tenant_id: tenant.id,
        secret_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        name: "ci".into(),
        scopes: Scopes::parse_stored("search reflect").expect("valid"),
        created_at: now_micros(),
    };
    db.insert_api_key(&key).await.expect("insert key");
    let found = db
        .find_api_key(&key.key_id)
        .await
        .expect("find")
        .expect("present");
    assert_eq!(found.tenant_id, tenant.id);
    assert_eq!(found.secret_hash, key.secret_hash);
    assert_eq!(found.created_at, key.created_at);
    assert_eq!(found.scopes, key.scopes);
    assert_eq!(
        db.list_api_keys(tenant.id)
            .await
            .expect("list")
            .iter()
            .map(|k| k.key_id.as_str())
            .collect::<Vec<_>>(),
        [key.key_id.as_str()]
    );
    assert_eq!((found.last_used_at, found.revoked_at), (None, None));

    let used = now_micros();
    assert!(db.touch_api_key(&key.key_id, used).await.expect("touch"));
    assert!(!db.touch_api_key("nope", used).await.expect("touch"));
    let found = db.find_api_key(&key.key_id).await.expect("find");
    assert_eq!(found.and_then(|k| k.last_used_at), Some(used));
    assert_eq!(db.find_api_key("nope").await.expect("find"), None);

    // Duplicate id, and a key for an unknown tenant (foreign key enforced on SQLite too).
    assert!(matches!(
        db.insert_api_key(&key).await,
        Err(DbError::Conflict(_))
    ));
    let orphan = NewApiKey {
        key_id: "orphan".into(),
        tenant_id: TenantId::new(),
        ..key.clone()
    };
    assert!(matches!(
        db.insert_api_key(&orphan).await,
        Err(DbError::Conflict(_))
    ));
}

async fn revoked_key_is_visible(db: &Db) {
    let tenant = db.create_tenant("acme").await.expect("create tenant");
    let key = NewApiKey {
        key_id: "k1".into(),
        tenant_id: tenant.id,
        secret_hash: "h".into(),
        name: "laptop".into(),
        scopes: Scopes::ALL,
        created_at: now_micros(),
    };
    db.insert_api_key(&key).await.expect("insert key");
    let at = now_micros();
    assert!(db.revoke_api_key("k1", at).await.expect("revoke"));
    assert!(
        !db.revoke_api_key("k1", now_micros())
            .await
            .expect("revoke again")
    );
    let found = db.find_api_key("k1").await.expect("find").expect("present");
    assert_eq!(found.revoked_at, Some(at));
}

async fn reserve_capture_race_has_one_winner(db: &Db) {
    let tenant = TenantId::new();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let id = EpisodeId::new();
                let r = db
                    .reserve_capture(&NewCapture {
                        tenant_id: tenant,
                        episode_id: id,
                        idempotency_key: Some("same-key".into()),
                        request_hash: format!("hash-{i}"),
                    })
                    .await;
                (id, i, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut existing = Vec::new();
    for t in futures::future::join_all(tasks).await {
        let (id, i, r) = t.expect("task");
        match r.expect("reserve") {
            Reservation::Reserved => winners.push((id, i)),
            Reservation::Existing {
                episode_id,
                request_hash,
            } => existing.push((episode_id, request_hash)),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one reservation wins");
    let (winner, i) = winners[0];
    assert_eq!(existing.len(), 49);
    assert!(
        existing
            .iter()
            .all(|(id, h)| *id == winner && *h == format!("hash-{i}"))
    );
    let record = db
        .get_capture(tenant, winner)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(record.idempotency_key.as_deref(), Some("same-key"));
    // Another tenant may use the same key; and the capture is invisible to it.
    let other = TenantId::new();
    assert_eq!(db.get_capture(other, winner).await.expect("get"), None);
    let r = db
        .reserve_capture(&NewCapture {
            tenant_id: other,
            episode_id: EpisodeId::new(),
            idempotency_key: Some("same-key".into()),
            request_hash: "x".into(),
        })
        .await
        .expect("reserve");
    assert_eq!(r, Reservation::Reserved);
}

async fn reserve_capture_without_key(db: &Db) {
    let tenant = TenantId::new();
    let capture = NewCapture {
        tenant_id: tenant,
        episode_id: EpisodeId::new(),
        idempotency_key: None,
        request_hash: "h".into(),
    };
    // NULL keys never collide with each other.
    let second = NewCapture {
        episode_id: EpisodeId::new(),
        ..capture.clone()
    };
    assert_eq!(
        db.reserve_capture(&capture).await.expect("reserve"),
        Reservation::Reserved
    );
    assert_eq!(
        db.reserve_capture(&second).await.expect("reserve"),
        Reservation::Reserved
    );
    // The same episode again is the existing one.
    assert_eq!(
        db.reserve_capture(&capture).await.expect("reserve"),
        Reservation::Existing {
            episode_id: capture.episode_id,
            request_hash: "h".into()
        }
    );
}

async fn episode_insert_is_idempotent(db: &Db) {
    let tenant = TenantId::new();
    let e = stored(tenant, 2);
    assert_eq!(
        db.insert_episode(&e).await.expect("insert"),
        InsertOutcome::Inserted
    );
    let mut changed = e.clone();
    changed.text_model = "other-model".into();
    changed.stored_at = now_micros() + time::Duration::seconds(5);
    assert_eq!(
        db.insert_episode(&changed).await.expect("insert again"),
        InsertOutcome::AlreadyExists
    );
    assert_eq!(
        db.get_episode(tenant, e.id).await.expect("get"),
        Some(read_back(&e))
    );
    assert_eq!(db.count_episodes(tenant).await.expect("count"), 1);
    assert_eq!(db.count_all_episodes().await.expect("count"), 1);
}

async fn get_episode_is_tenant_scoped(db: &Db) {
    let (a, b) = (TenantId::new(), TenantId::new());
    let ea = stored(a, 1);
    let eb = stored(b, 2);
    db.insert_episode(&ea).await.expect("insert");
    db.insert_episode(&eb).await.expect("insert");
    assert_eq!(
        db.get_episode(a, ea.id).await.expect("get"),
        Some(read_back(&ea))
    );
    assert_eq!(db.get_episode(b, ea.id).await.expect("get"), None);
    assert_eq!(db.get_episode(a, eb.id).await.expect("get"), None);
    assert_eq!(
        db.get_episode(a, EpisodeId::new()).await.expect("get"),
        None
    );
    assert_eq!(db.count_episodes(a).await.expect("count"), 1);
    assert_eq!(db.count_episodes(TenantId::new()).await.expect("count"), 0);
    assert_eq!(db.count_all_episodes().await.expect("count"), 2);
}

async fn embeddings_round_trip_bit_exactly(db: &Db) {
    let tenant = TenantId::new();
    let bits = |v: &Embedding| v.as_slice().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for seed in 0..20 {
        let e = stored(tenant, seed);
        db.insert_episode(&e).await.expect("insert");
        let back = db
            .get_episode(tenant, e.id)
            .await
            .expect("get")
            .expect("present");
        let expected = read_back(&e);
        // Storage adds nothing: exactly the bits of common's own byte round trip.
        assert_eq!(
            bits(&back.text_embedding),
            bits(&expected.text_embedding),
            "seed {seed}"
        );
        assert_eq!(
            back.image_embedding.as_ref().map(bits),
            expected.image_embedding.as_ref().map(bits)
        );
        assert!(back.text_embedding.cosine(&e.text_embedding) > 0.999_999);
        assert_eq!(
            back.episode.screenshot().map(|s| s.bytes().to_vec()),
            seed.is_multiple_of(2).then(|| PNG.to_vec())
        );
        assert_eq!(back, expected);
    }
}

async fn scan_visits_every_row_once(db: &Db) {
    let tenants = [TenantId::new(), TenantId::new(), TenantId::new()];
    let mut expected = HashSet::new();
    for i in 0..23u64 {
        let e = stored(tenants[(i % 3) as usize], i);
        expected.insert(e.id);
        db.insert_episode(&e).await.expect("insert");
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = db.scan_episodes(after, 5).await.expect("scan");
        assert!(page.len() <= 5);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|e| e.id));
    }
    assert_eq!(seen.len(), 23);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ordered by id");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
}

async fn concurrent_inserts_succeed(db: &Db) {
    let tenant = TenantId::new();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move { db.insert_episode(&stored(tenant, i)).await })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        assert_eq!(t.expect("task").expect("insert"), InsertOutcome::Inserted);
    }
    assert_eq!(db.count_episodes(tenant).await.expect("count"), 200);
}

#[tokio::test]
async fn test_db_backends_are_what_they_say() {
    assert_eq!(TestDb::postgres().await.db.backend(), Backend::Postgres);
    assert_eq!(TestDb::sqlite().await.db.backend(), Backend::Sqlite);
}

fn config(url: &str, timeout: Duration) -> DbConfig {
    DbConfig {
        connect_timeout: timeout,
        ..DbConfig::new(url)
    }
}

#[tokio::test]
async fn closed_port_is_unavailable_quickly() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let started = Instant::now();
    let err = Db::connect(&config(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        Duration::from_secs(2),
    ))
    .await
    .expect_err("nothing listens there");
    assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn silent_server_is_unavailable_after_the_timeout() {
    // Accepts TCP connections (backlog) but never speaks: must time out, not hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let started = Instant::now();
    let err = Db::connect(&config(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        Duration::from_millis(500),
    ))
    .await
    .expect_err("the server never answers");
    assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}

#[tokio::test]
async fn bad_urls_are_config_errors() {
    let err = Db::connect(&DbConfig::new("mysql://root@localhost/x"))
        .await
        .expect_err("unsupported");
    assert!(matches!(err, DbError::Config(_)));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let db = Db::connect(&DbConfig::new("sqlite::memory:"))
        .await
        .expect("connect");
    assert_eq!(
        db.migrate().await.expect("migrate").len(),
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .expect("migrations dir")
            .count()
    );
    let t = db.create_tenant("mem").await.expect("tenant");
    assert_eq!(db.get_tenant(t.id).await.expect("get"), Some(t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_handles_on_one_file_do_not_lock_each_other_out() {
    // e.g. two services of the standalone binary that each opened the file.
    let t = TestDb::sqlite().await;
    let other = Db::connect(&t.config()).await.expect("second handle");
    let tenant = TenantId::new();
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let db = if i % 2 == 0 {
                t.db.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move { db.insert_episode(&stored(tenant, i)).await })
        })
        .collect();
    for r in futures::future::join_all(tasks).await {
        assert_eq!(r.expect("task").expect("insert"), InsertOutcome::Inserted);
    }
    assert_eq!(other.count_episodes(tenant).await.expect("count"), 100);
}

// ---- the episode API: listing, deletion, feedback -------------------------------------------

/// A stored episode with chosen labels and capture time.
fn labelled(
    tenant: TenantId,
    seed: u64,
    captured_at: time::OffsetDateTime,
    class: &str,
    tools: &[&str],
    tags: &[&str],
) -> StoredEpisode {
    let mut e = stored(tenant, seed);
    e.episode = Episode::parse(EpisodeFields {
        goal: Some(format!("goal {seed}")),
        error_class: Some(class.to_owned()),
        tool_chain: tools.iter().map(|t| (*t).to_owned()).collect(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        screenshot: e.episode.screenshot().map(common::Screenshot::to_base64),
        ..Default::default()
    })
    .expect("valid episode");
    e.captured_at = captured_at;
    e
}

/// Every page of a listing, checking that only the last one is short.
async fn all_pages(
    db: &Db,
    tenant: TenantId,
    filter: &EpisodeFilter,
    limit: usize,
) -> Vec<EpisodeId> {
    let mut ids = Vec::new();
    let mut after: Option<EpisodeCursor> = None;
    for _ in 0..100 {
        let page = db
            .list_episodes(tenant, filter, after, limit)
            .await
            .expect("list");
        ids.extend(page.episodes.iter().map(|e| e.stored.id));
        match page.next {
            Some(next) => {
                assert_eq!(
                    page.episodes.len(),
                    limit,
                    "only the last page may be short"
                );
                after = Some(next);
            }
            None => return ids,
        }
    }
    panic!("the listing never ended");
}

async fn list_pages_newest_first_with_filters(db: &Db) {
    let tenant = TenantId::new();
    let other = TenantId::new();
    let base = now_micros() - time::Duration::hours(1);
    let mut all = Vec::new();
    for i in 0..25u64 {
        // Pairs share a capture time: the id breaks the tie.
        let at = base + time::Duration::seconds((i / 2) as i64);
        let class = if i % 5 == 0 {
            "network_error"
        } else {
            "dependency_error"
        };
        let tools: &[&str] = if i % 3 == 0 {
            &["kubectl", "helm"]
        } else {
            &["kubectl-extra"]
        };
        let tags: &[&str] = if i % 2 == 0 {
            &["rbac"]
        } else {
            &["net", "Rbac2"]
        };
        let e = labelled(tenant, i, at, class, tools, tags);
        db.insert_episode(&e).await.expect("insert");
        all.push(e);
    }
    for i in 0..3u64 {
        let e = labelled(
            other,
            100 + i,
            base,
            "network_error",
            &["kubectl"],
            &["rbac"],
        );
        db.insert_episode(&e).await.expect("insert");
    }
    let mut newest_first = all.clone();
    newest_first.sort_by_key(|e| std::cmp::Reverse((e.captured_at, e.id.to_string())));
    let expect = |keep: &dyn Fn(&StoredEpisode) -> bool| -> Vec<EpisodeId> {
        newest_first
            .iter()
            .filter(|e| keep(e))
            .map(|e| e.id)
            .collect()
    };

    // No filter, several page sizes (including one that divides the total exactly).
    let none = EpisodeFilter::default();
    for limit in [1, 7, 25, 100] {
        assert_eq!(
            all_pages(db, tenant, &none, limit).await,
            expect(&|_| true),
            "limit {limit}"
        );
    }
    let first = db
        .list_episodes(tenant, &none, None, 7)
        .await
        .expect("list");
    assert_eq!(first.episodes.len(), 7);
    assert!(first.next.is_some());
    let exact = db
        .list_episodes(tenant, &none, None, 25)
        .await
        .expect("list");
    assert_eq!((exact.episodes.len(), exact.next), (25, None));

    // Each filter, and all of them together, across pages.
    let tool = EpisodeFilter {
        tool: Some(" KUBECTL ".into()),
        ..Default::default()
    };
    let with_kubectl = expect(&|e| e.episode.tool_chain().contains(&"kubectl".to_owned()));
    assert_eq!(with_kubectl.len(), 9);
    assert_eq!(all_pages(db, tenant, &tool, 2).await, with_kubectl);
    let tag = EpisodeFilter {
        tag: Some("rbac".into()),
        ..Default::default()
    };
    assert_eq!(
        all_pages(db, tenant, &tag, 4).await,
        expect(&|e| e.episode.tags().contains(&"rbac".to_owned()))
    );
    let class = EpisodeFilter {
        error_class: Some(common::ErrorClass::NetworkError),
        ..Default::default()
    };
    assert_eq!(
        all_pages(db, tenant, &class, 2).await,
        expect(&|e| e.episode.error_class() == common::ErrorClass::NetworkError)
    );
    let after = base + time::Duration::seconds(3);
    let before = base + time::Duration::seconds(9);
    let window = EpisodeFilter {
        created_after: Some(after),
        created_before: Some(before),
        ..Default::default()
    };
    let in_window = expect(&|e| e.captured_at >= after && e.captured_at < before);
    assert_eq!(in_window.len(), 12);
    assert_eq!(all_pages(db, tenant, &window, 5).await, in_window);
    let combined = EpisodeFilter {
        tool: Some("kubectl".into()),
        tag: Some("rbac".into()),
        created_after: Some(base),
        ..Default::default()
    };
    assert_eq!(
        all_pages(db, tenant, &combined, 1).await,
        expect(&|e| {
            e.episode.tool_chain().contains(&"kubectl".to_owned())
                && e.episode.tags().contains(&"rbac".to_owned())
        })
    );
    // Membership is exact: no prefixes, no substrings.
    for value in ["kube", "kubectl-", "rbac2 ", "bac"] {
        let f = EpisodeFilter {
            tag: Some(value.into()),
            tool: None,
            ..Default::default()
        };
        let expected = expect(&|e| e.episode.tags().contains(&value.trim().to_owned()));
        assert_eq!(
            all_pages(db, tenant, &f, 10).await,
            expected,
            "tag {value:?}"
        );
    }

    // Screenshots are described, not read.
    let page = db
        .list_episodes(tenant, &none, None, 100)
        .await
        .expect("list");
    for listed in &page.episodes {
        assert_eq!(listed.stored.episode.screenshot(), None);
        let original = all
            .iter()
            .find(|e| e.id == listed.stored.id)
            .expect("known");
        let expected = original.episode.screenshot().map(|s| ScreenshotInfo {
            format: s.format(),
            size_bytes: s.bytes().len(),
        });
        assert_eq!(listed.screenshot, expected);
        assert_eq!(
            listed.stored.text_embedding,
            read_back(original).text_embedding
        );
    }

    // Another tenant sees only its own; a deleted episode is never listed.
    assert_eq!(all_pages(db, other, &none, 10).await.len(), 3);
    assert!(matches!(
        db.delete_episode(tenant, newest_first[3].id).await,
        Ok(Deletion::Deleted(_))
    ));
    let listed = all_pages(db, tenant, &none, 6).await;
    assert_eq!(listed.len(), 24);
    assert!(!listed.contains(&newest_first[3].id));
}

async fn delete_tombstones_once_and_is_tenant_scoped(db: &Db) {
    let tenant = TenantId::new();
    let other = TenantId::new();
    let with_image = stored(tenant, 2);
    let without_image = stored(tenant, 3);
    for e in [&with_image, &without_image] {
        db.insert_episode(e).await.expect("insert");
    }
    // Another tenant's id is not found, and nothing changes.
    assert_eq!(
        db.delete_episode(other, with_image.id)
            .await
            .expect("delete"),
        Deletion::NotFound
    );
    assert!(
        db.get_episode(tenant, with_image.id)
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(
        db.delete_episode(tenant, EpisodeId::new())
            .await
            .expect("delete"),
        Deletion::NotFound
    );

    let Deletion::Deleted(tombstone) = db
        .delete_episode(tenant, with_image.id)
        .await
        .expect("delete")
    else {
        panic!("expected a deletion");
    };
    assert_eq!(tombstone.text_vector_id, with_image.vector_id);
    assert_eq!(tombstone.image_vector_id, Some(with_image.vector_id));
    assert_eq!(
        db.get_episode(tenant, with_image.id).await.expect("get"),
        None
    );
    assert!(
        db.is_episode_deleted(tenant, with_image.id)
            .await
            .expect("check")
    );
    assert!(
        !db.is_episode_deleted(other, with_image.id)
            .await
            .expect("check")
    );
    assert_eq!(
        db.get_tombstone(tenant, with_image.id).await.expect("get"),
        Some(tombstone.clone())
    );
    // Again: the same tombstone.
    assert_eq!(
        db.delete_episode(tenant, with_image.id)
            .await
            .expect("delete"),
        Deletion::AlreadyDeleted(tombstone)
    );
    let Deletion::Deleted(plain) = db
        .delete_episode(tenant, without_image.id)
        .await
        .expect("delete")
    else {
        panic!("expected a deletion");
    };
    assert_eq!(plain.image_vector_id, None);

    // Still processing (captured, not stored): deleted too, and its image vector (if it
    // gets one) with it.
    let processing = EpisodeId::new();
    db.reserve_capture(&NewCapture {
        tenant_id: tenant,
        episode_id: processing,
        idempotency_key: Some("k".into()),
        request_hash: "h".into(),
    })
    .await
    .expect("reserve");
    assert_eq!(
        db.delete_episode(other, processing).await.expect("delete"),
        Deletion::NotFound
    );
    let Deletion::Deleted(t) = db.delete_episode(tenant, processing).await.expect("delete") else {
        panic!("expected a deletion");
    };
    let vector = VectorId::for_episode(tenant, processing);
    assert_eq!(
        (t.text_vector_id, t.image_vector_id),
        (vector, Some(vector))
    );
    // The capture record stays (it binds the Idempotency-Key).
    assert!(
        db.get_capture(tenant, processing)
            .await
            .expect("get")
            .is_some()
    );

    let deleted = db
        .deleted_episode_ids(tenant, &[with_image.id, processing, EpisodeId::new()])
        .await
        .expect("ids");
    assert_eq!(deleted, HashSet::from([with_image.id, processing]));

    // Concurrent deletes of one episode: exactly one deletes.
    let racer = stored(tenant, 5);
    db.insert_episode(&racer).await.expect("insert");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.delete_episode(tenant, racer.id).await })
        })
        .collect();
    let outcomes: Vec<Deletion> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("delete"))
        .collect();
    let firsts = outcomes
        .iter()
        .filter(|d| matches!(d, Deletion::Deleted(_)))
        .count();
    assert_eq!(firsts, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|d| !matches!(d, Deletion::NotFound)));
}

async fn purge_removes_what_raced_a_deletion(db: &Db) {
    let tenant = TenantId::new();
    let e = stored(tenant, 4);
    db.insert_episode(&e).await.expect("insert");
    // Not deleted: purge changes nothing.
    assert!(!db.purge_deleted_episode(tenant, e.id).await.expect("purge"));
    assert!(db.get_episode(tenant, e.id).await.expect("get").is_some());

    db.delete_episode(tenant, e.id).await.expect("delete");
    // A pipeline redelivery writes the row again (and feedback arrives) while the deletion
    // commits: the purge removes them.
    assert_eq!(
        db.insert_episode(&e).await.expect("insert"),
        InsertOutcome::Inserted
    );
    assert!(db.purge_deleted_episode(tenant, e.id).await.expect("purge"));
    assert_eq!(db.get_episode(tenant, e.id).await.expect("get"), None);
    assert!(
        db.purge_deleted_episode(tenant, e.id)
            .await
            .expect("purge again")
    );
    assert!(
        !db.purge_deleted_episode(TenantId::new(), e.id)
            .await
            .expect("purge")
    );
}

async fn feedback_is_counted_per_tenant_and_dies_with_the_episode(db: &Db) {
    let tenant = TenantId::new();
    let other = TenantId::new();
    let e1 = stored(tenant, 6);
    let e2 = stored(tenant, 7);
    for e in [&e1, &e2] {
        db.insert_episode(e).await.expect("insert");
    }
    let helpful = NewFeedback {
        helpful: true,
        note: Some("fixed it".into()),
    };
    let unhelpful = NewFeedback {
        helpful: false,
        note: None,
    };
    assert_eq!(
        db.record_feedback(tenant, e1.id, &helpful)
            .await
            .expect("feedback"),
        Some(FeedbackCounts {
            helpful: 1,
            unhelpful: 0
        })
    );
    assert_eq!(
        db.record_feedback(tenant, e1.id, &unhelpful)
            .await
            .expect("feedback"),
        Some(FeedbackCounts {
            helpful: 1,
            unhelpful: 1
        })
    );
    // Concurrent feedback is never lost.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let db = db.clone();
            let f = NewFeedback {
                helpful: i % 4 != 0,
                note: None,
            };
            let id = e1.id;
            tokio::spawn(async move { db.record_feedback(tenant, id, &f).await })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        assert!(t.expect("task").expect("feedback").is_some());
    }
    // Another tenant, an unknown id: nothing recorded.
    assert_eq!(
        db.record_feedback(other, e1.id, &helpful)
            .await
            .expect("feedback"),
        None
    );
    assert_eq!(
        db.record_feedback(tenant, EpisodeId::new(), &helpful)
            .await
            .expect("feedback"),
        None
    );
    let unknown = EpisodeId::new();
    let counts = db
        .feedback_counts(tenant, &[e1.id, e2.id, unknown])
        .await
        .expect("counts");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts.get(&e1.id), Some(&(16, 6)));
    assert!(
        db.feedback_counts(other, &[e1.id])
            .await
            .expect("counts")
            .is_empty()
    );
    assert!(
        db.feedback_counts(tenant, &[])
            .await
            .expect("counts")
            .is_empty()
    );

    // An episode still processing can get feedback too.
    let processing = EpisodeId::new();
    db.reserve_capture(&NewCapture {
        tenant_id: tenant,
        episode_id: processing,
        idempotency_key: None,
        request_hash: "h".into(),
    })
    .await
    .expect("reserve");
    assert!(
        db.record_feedback(tenant, processing, &unhelpful)
            .await
            .expect("feedback")
            .is_some()
    );

    // Deleting the episode deletes its feedback; no more can be given.
    db.delete_episode(tenant, e1.id).await.expect("delete");
    assert!(
        db.feedback_counts(tenant, &[e1.id])
            .await
            .expect("counts")
            .is_empty()
    );
    assert_eq!(
        db.record_feedback(tenant, e1.id, &helpful)
            .await
            .expect("feedback"),
        None
    );
    let counts = db
        .feedback_counts(tenant, &[e1.id, processing])
        .await
        .expect("counts");
    assert_eq!(
        counts,
        std::collections::HashMap::from([(processing, (0, 1))])
    );
}

/// Rows stored before the listing's label keys existed are filled in by `migrate`.
async fn label_keys_are_filled_in_by_migrate(t: &TestDb) {
    use diesel_async::{AsyncConnection as _, SimpleAsyncConnection as _};
    let db = &t.db;
    let tenant = TenantId::new();
    let at = now_micros();
    let e = labelled(tenant, 1, at, "unknown", &["terraform"], &["infra"]);
    db.insert_episode(&e).await.expect("insert");
    let forget = "UPDATE episodes SET label_keys = NULL";
    match db.backend() {
        Backend::Postgres => {
            let mut conn = diesel_async::AsyncPgConnection::establish(&t.url)
                .await
                .expect("connect");
            conn.batch_execute(forget).await.expect("update");
        }
        Backend::Sqlite => {
            use diesel::Connection as _;
            use diesel::connection::SimpleConnection as _;
            let path = t.url.trim_start_matches("sqlite://");
            let mut conn = diesel::SqliteConnection::establish(path).expect("connect");
            conn.batch_execute(forget).expect("update");
        }
    }
    let tool = EpisodeFilter {
        tool: Some("terraform".into()),
        ..Default::default()
    };
    let found = |page: db::EpisodePage| page.episodes.len();
    assert_eq!(
        found(
            db.list_episodes(tenant, &tool, None, 10)
                .await
                .expect("list")
        ),
        0
    );
    db.migrate().await.expect("migrate");
    assert_eq!(
        found(
            db.list_episodes(tenant, &tool, None, 10)
                .await
                .expect("list")
        ),
        1
    );
    let tag = EpisodeFilter {
        tag: Some("infra".into()),
        ..Default::default()
    };
    assert_eq!(
        found(
            db.list_episodes(tenant, &tag, None, 10)
                .await
                .expect("list")
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_keys_are_filled_in_by_migrate_postgres() {
    label_keys_are_filled_in_by_migrate(&TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_keys_are_filled_in_by_migrate_sqlite() {
    label_keys_are_filled_in_by_migrate(&TestDb::sqlite().await).await;
}
