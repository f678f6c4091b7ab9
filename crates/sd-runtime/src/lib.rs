//! `sd-runtime`: how sd supervises the components of a deployment.
//!
//! Today it owns the deployment plan ([`plan`]: the resolved tree checked and typed before
//! anything starts, every error at once) and the supervision decisions ([`supervision`]):
//! given a parent's restart
//! strategy, intensity and backoff, and how one of its children ended, what happens next
//! (nothing, restart which children after which delay, or escalate to the parent). The
//! decisions are pure functions of their inputs (time and randomness are passed in), so they
//! are tested exhaustively and a chaos run replays them exactly from its seed. The component
//! actors that carry them out are built on this module.
//!
//! Guarantees: restarts stay within the declared intensity, then escalate (INV-5); a
//! `temporary` child is never restarted, a `transient` one only after an abnormal end.

pub mod plan;
pub mod supervision;

/// What is wrong with a component's supervision settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An attribute has a value the runtime cannot use.
    #[error("`{path}:{attribute}`: {reason}")]
    InvalidAttribute {
        /// The component's path.
        path: String,
        /// The attribute.
        attribute: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
