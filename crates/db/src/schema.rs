//! The diesel schema. Written by hand (no diesel CLI, no libpq) and kept in step with
//! `migrations/`; one schema serves both backends because the migrations use only portable
//! types (TEXT, BIGINT).

diesel::table! {
    tenants (id) {
        id -> Text,
        name -> Text,
        created_at -> BigInt,
        contact_email -> Nullable<Text>,
        tier -> Text,
        status -> Text,
        region -> Text,
        billing_customer_id -> Nullable<Text>,
        billing_subscription_id -> Nullable<Text>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    api_keys (key_id) {
        key_id -> Text,
        tenant_id -> Text,
        secret_hash -> Text,
        name -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        scopes -> Text,
    }
}

diesel::table! {
    captures (episode_id) {
        episode_id -> Text,
        tenant_id -> Text,
        idempotency_key -> Nullable<Text>,
        request_hash -> Text,
        accepted_at -> BigInt,
    }
}

diesel::table! {
    episodes (id) {
        id -> Text,
        tenant_id -> Text,
        vector_id -> BigInt,
        document -> Text,
        error_class -> Text,
        screenshot_format -> Nullable<Text>,
        screenshot -> Nullable<Text>,
        text_embedding -> Text,
        text_model -> Text,
        image_embedding -> Nullable<Text>,
        image_model -> Nullable<Text>,
        image_status -> Text,
        redactions -> Text,
        captured_at -> BigInt,
        stored_at -> BigInt,
        label_keys -> Nullable<Text>,
    }
}

diesel::table! {
    deleted_episodes (tenant_id, episode_id) {
        tenant_id -> Text,
        episode_id -> Text,
        text_vector_id -> BigInt,
        image_vector_id -> Nullable<BigInt>,
        deleted_at -> BigInt,
    }
}

diesel::table! {
    episode_feedback (tenant_id, episode_id) {
        tenant_id -> Text,
        episode_id -> Text,
        helpful_count -> BigInt,
        unhelpful_count -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    episode_feedback_log (id) {
        id -> Text,
        tenant_id -> Text,
        episode_id -> Text,
        helpful -> BigInt,
        note -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    usage_monthly (tenant_id, month) {
        tenant_id -> Text,
        month -> Text,
        episodes_captured -> BigInt,
        searches -> BigInt,
        gates -> BigInt,
        quota_warned -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        tenant_id -> Nullable<Text>,
        actor -> Text,
        action -> Text,
        target -> Text,
        request_id -> Nullable<Text>,
        outcome -> Text,
        details -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    api_keys,
    captures,
    episodes,
    deleted_episodes,
    episode_feedback,
    episode_feedback_log,
    usage_monthly,
    audit_log,
);
