//! The CLI contract: what each exit code means.

/// Done as asked.
pub const OK: i32 = 0;
/// A step failed or an error occurred; a run that had started can be continued with `kmsctl resume`.
pub const FAILED: i32 = 1;
/// Refused before any change: a preflight check, bad arguments, no confirmation, another run holds the cluster.
pub const REFUSED: i32 = 2;
/// The cluster's reported state differs from what was asked: kmsctl stopped.
pub const VERIFICATION_FAILED: i32 = 3;
/// Some Secrets could not be re-encrypted; they are listed by namespace/name.
pub const REENCRYPT_INCOMPLETE: i32 = 4;
