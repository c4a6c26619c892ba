//! The kinds of secrets and personal data that [`crate::redact`] recognises.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a redacted span was. The serde name (snake_case) is also the label
/// used in the replacement text: `[REDACTED:<label>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SecretKind {
    /// `-----BEGIN … PRIVATE KEY-----` blocks (PEM, OpenSSH, PGP), also truncated ones.
    PrivateKey,
    /// JSON Web Tokens (`eyJ….eyJ….sig`) and bare `eyJ…` payload segments.
    Jwt,
    /// EpisodicMemory's own API keys, `em_live_<id>_<secret>` / `em_test_…`.
    EmApiKey,
    /// GitHub tokens: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`.
    GithubToken,
    /// GitLab tokens: `glpat-`, `gldt-`, `glrt-`, `glptt-`, ….
    GitlabToken,
    /// OpenAI-style keys: `sk-…`, `sk-proj-…`.
    OpenaiKey,
    /// Slack tokens: `xoxb-`, `xoxp-`, `xoxa-`, `xoxs-`, `xapp-`, ….
    SlackToken,
    /// The secret path of a Slack incoming-webhook URL (`hooks.slack.com/services/…`).
    SlackWebhook,
    /// Stripe keys: `sk_live_`, `rk_live_`, `pk_live_`, `*_test_`, `whsec_`.
    StripeKey,
    /// Google API keys: `AIza…`.
    GoogleApiKey,
    /// npm tokens: `npm_…`.
    NpmToken,
    /// AWS access key ids: `AKIA…`, `ASIA…` (20 characters).
    AwsAccessKey,
    /// AWS secret access keys: 40 base64 characters near `aws`/`secret`.
    AwsSecretKey,
    /// The password in a URL's userinfo, `scheme://user:<password>@host`.
    UrlPassword,
    /// The credential of an `Authorization:` header or `Bearer`/`Basic` scheme.
    Authorization,
    /// Value of a `password`/`passwd`/`pwd`/`passphrase` key or flag.
    Password,
    /// Value of a `token`/`access_token`/`auth_token`/… key or flag, and
    /// prefixed registry tokens (`hf_`, `pypi-AgE…`, `dckr_pat_`, `hvs.`, …).
    Token,
    /// Value of an `api_key`/`apikey`/`X-Api-Key` key or flag.
    ApiKey,
    /// Value of a `secret`/`client_secret`/`secret_key`/`private_key`/
    /// `access_key`/`AccountKey`/… key or flag.
    Secret,
    /// E-mail addresses (not `git@…`, not hosts without a real top-level domain).
    Email,
    /// Payment card numbers: 13–19 digits, optional space/dash groups, Luhn-checked.
    CreditCard,
    /// Phone numbers in clear phone shapes (E.164, `+1 415-555-0139`, `(415) 555-0139`, …).
    Phone,
}

impl SecretKind {
    /// Every kind, in the order used for [`crate::Redacted::findings`].
    pub const ALL: [SecretKind; 22] = [
        SecretKind::PrivateKey,
        SecretKind::Jwt,
        SecretKind::EmApiKey,
        SecretKind::GithubToken,
        SecretKind::GitlabToken,
        SecretKind::OpenaiKey,
        SecretKind::SlackToken,
        SecretKind::SlackWebhook,
        SecretKind::StripeKey,
        SecretKind::GoogleApiKey,
        SecretKind::NpmToken,
        SecretKind::AwsAccessKey,
        SecretKind::AwsSecretKey,
        SecretKind::UrlPassword,
        SecretKind::Authorization,
        SecretKind::Password,
        SecretKind::Token,
        SecretKind::ApiKey,
        SecretKind::Secret,
        SecretKind::Email,
        SecretKind::CreditCard,
        SecretKind::Phone,
    ];

    /// The snake_case label, as in `[REDACTED:<label>]` and the serde name.
    pub const fn label(self) -> &'static str {
        match self {
            SecretKind::PrivateKey => "private_key",
            SecretKind::Jwt => "jwt",
            SecretKind::EmApiKey => "em_api_key",
            SecretKind::GithubToken => "github_token",
            SecretKind::GitlabToken => "gitlab_token",
            SecretKind::OpenaiKey => "openai_key",
            SecretKind::SlackToken => "slack_token",
            SecretKind::SlackWebhook => "slack_webhook",
            SecretKind::StripeKey => "stripe_key",
            SecretKind::GoogleApiKey => "google_api_key",
            SecretKind::NpmToken => "npm_token",
            SecretKind::AwsAccessKey => "aws_access_key",
            SecretKind::AwsSecretKey => "aws_secret_key",
            SecretKind::UrlPassword => "url_password",
            SecretKind::Authorization => "authorization",
            SecretKind::Password => "password",
            SecretKind::Token => "token",
            SecretKind::ApiKey => "api_key",
            SecretKind::Secret => "secret",
            SecretKind::Email => "email",
            SecretKind::CreditCard => "credit_card",
            SecretKind::Phone => "phone",
        }
    }

    /// The full replacement text, e.g. `[REDACTED:email]`.
    pub fn placeholder(self) -> String {
        format!("[REDACTED:{}]", self.label())
    }

    /// When two detected spans overlap they are merged and the kind with the
    /// higher priority names the merged span (specific token formats beat
    /// generic key/value detection, which beats e-mail, card and phone shapes).
    pub(crate) const fn priority(self) -> u8 {
        match self {
            SecretKind::PrivateKey => 100,
            SecretKind::Jwt => 90,
            SecretKind::EmApiKey
            | SecretKind::GithubToken
            | SecretKind::GitlabToken
            | SecretKind::OpenaiKey
            | SecretKind::SlackToken
            | SecretKind::SlackWebhook
            | SecretKind::StripeKey
            | SecretKind::GoogleApiKey
            | SecretKind::NpmToken
            | SecretKind::AwsAccessKey
            | SecretKind::AwsSecretKey => 80,
            SecretKind::UrlPassword => 70,
            SecretKind::Authorization => 65,
            SecretKind::Password | SecretKind::Token | SecretKind::ApiKey | SecretKind::Secret => {
                60
            }
            SecretKind::Email => 50,
            SecretKind::CreditCard => 40,
            SecretKind::Phone => 30,
        }
    }

    /// Position in [`SecretKind::ALL`] (declaration order; checked by a test).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
