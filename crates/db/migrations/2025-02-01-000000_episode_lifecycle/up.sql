-- The episode API: listing with filters, deletion (tombstones) and feedback.
-- Portable SQL, like the initial migration.

-- Listing filters on tools and tags: each value as `tool:<hex>` or `tag:<hex>` (its UTF-8
-- bytes, hex-encoded) between '|' delimiters, e.g. '|tool:6b75626563746c|tag:72626163|' for
-- tool kubectl and tag rbac, so that membership is an exact `LIKE '%|tool:<hex>|%'` on both
-- backends without escaping. NULL until computed: rows written before this migration are
-- filled in by `Db::migrate` (db::repo::episodes).
ALTER TABLE episodes ADD COLUMN label_keys TEXT NULL;

-- Newest first with a tie-break on id (keyset pagination); supersedes the initial index.
CREATE INDEX episodes_tenant_captured_id_idx ON episodes (tenant_id, captured_at, id);
DROP INDEX episodes_tenant_captured_idx;

-- A deleted episode: kept forever so that nothing (a redelivered pipeline event, a capture
-- replayed with the same Idempotency-Key) brings it back, and so that a repeated DELETE can
-- re-announce the deletion with the same vector ids.
CREATE TABLE deleted_episodes (
    tenant_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    text_vector_id BIGINT NOT NULL,
    image_vector_id BIGINT NULL,
    deleted_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, episode_id)
);

-- Feedback counts per episode (upserted atomically) ...
CREATE TABLE episode_feedback (
    tenant_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    helpful_count BIGINT NOT NULL,
    unhelpful_count BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, episode_id)
);

-- ... and every feedback given, with its (redacted) note.
CREATE TABLE episode_feedback_log (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    helpful BIGINT NOT NULL,
    note TEXT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX episode_feedback_log_episode_idx ON episode_feedback_log (tenant_id, episode_id);
