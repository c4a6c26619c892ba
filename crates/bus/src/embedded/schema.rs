//! Tables of the embedded bus (one SQLite file).

/// Created on open; `user_version` marks the layout.
pub(super) const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS bus_streams (
    name                TEXT    NOT NULL PRIMARY KEY,
    subjects            TEXT    NOT NULL,            -- JSON array of subject patterns
    max_age_ms          BIGINT  NOT NULL,
    duplicate_window_ms BIGINT  NOT NULL,
    last_seq            BIGINT  NOT NULL DEFAULT 0   -- sequences are never reused
);
CREATE TABLE IF NOT EXISTS bus_consumers (
    stream          TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    filter_subject  TEXT   NOT NULL,
    ack_wait_ms     BIGINT NOT NULL,
    max_ack_pending BIGINT NOT NULL,
    PRIMARY KEY (stream, name)
);
CREATE TABLE IF NOT EXISTS bus_messages (
    stream       TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    subject      TEXT   NOT NULL,
    headers      TEXT   NOT NULL,                    -- JSON array of [name, value]
    payload      BLOB   NOT NULL,
    published_ms BIGINT NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE INDEX IF NOT EXISTS bus_messages_age ON bus_messages (stream, published_ms);
CREATE TABLE IF NOT EXISTS bus_dedup (
    stream       TEXT   NOT NULL,
    msg_id       TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    published_ms BIGINT NOT NULL,
    PRIMARY KEY (stream, msg_id)
);
CREATE INDEX IF NOT EXISTS bus_dedup_age ON bus_dedup (stream, published_ms);
CREATE TABLE IF NOT EXISTS bus_deliveries (
    stream     TEXT   NOT NULL,
    consumer   TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    delivered  BIGINT NOT NULL DEFAULT 0,            -- deliveries so far
    visible_ms BIGINT NOT NULL,                      -- deliverable from (lease end, nak delay)
    lease      BIGINT,                               -- token of the current lease, if leased
    PRIMARY KEY (stream, consumer, seq)
);
CREATE INDEX IF NOT EXISTS bus_deliveries_visible ON bus_deliveries (stream, consumer, visible_ms);
CREATE INDEX IF NOT EXISTS bus_deliveries_seq ON bus_deliveries (stream, seq);
PRAGMA user_version = 1;
"#;

diesel::table! {
    bus_streams (name) {
        name -> Text,
        subjects -> Text,
        max_age_ms -> BigInt,
        duplicate_window_ms -> BigInt,
        last_seq -> BigInt,
    }
}

diesel::table! {
    bus_consumers (stream, name) {
        stream -> Text,
        name -> Text,
        filter_subject -> Text,
        ack_wait_ms -> BigInt,
        max_ack_pending -> BigInt,
    }
}

diesel::table! {
    bus_messages (stream, seq) {
        stream -> Text,
        seq -> BigInt,
        subject -> Text,
        headers -> Text,
        payload -> Binary,
        published_ms -> BigInt,
    }
}

diesel::table! {
    bus_dedup (stream, msg_id) {
        stream -> Text,
        msg_id -> Text,
        seq -> BigInt,
        published_ms -> BigInt,
    }
}

diesel::table! {
    bus_deliveries (stream, consumer, seq) {
        stream -> Text,
        consumer -> Text,
        seq -> BigInt,
        delivered -> BigInt,
        visible_ms -> BigInt,
        lease -> Nullable<BigInt>,
    }
}
