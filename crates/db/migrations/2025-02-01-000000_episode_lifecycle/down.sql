DROP TABLE episode_feedback_log;
DROP TABLE episode_feedback;
DROP TABLE deleted_episodes;
CREATE INDEX episodes_tenant_captured_idx ON episodes (tenant_id, captured_at);
DROP INDEX episodes_tenant_captured_id_idx;
ALTER TABLE episodes DROP COLUMN label_keys;
