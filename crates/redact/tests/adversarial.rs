//! Adversarial inputs never panic, redact idempotently, and leave no secret behind.
//! (How fast they are is measured by `benches/redact.rs`, not asserted here.)

#[path = "common/adversarial.rs"]
mod adversarial;

#[test]
fn adversarial_inputs_redact_idempotently() {
    for (name, input) in adversarial::cases() {
        let once = redact::redact(&input);
        let twice = redact::redact(&once.text);
        assert_eq!(twice.text, once.text, "{name}: not idempotent");
        assert!(
            !once.text.contains("AKIA4QX7RZ2LMN8PWT3K") && !once.text.contains("ghp_R8mZ"),
            "{name}: a secret survived"
        );
    }
}
