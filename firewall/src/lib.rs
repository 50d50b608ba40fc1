//! Opening and closing access for successful knocks: knockd-style commands or a
//! native firewall backend, off the packet path, within limits, and journaled so that
//! a crash never leaves a door open for ever.
//!
//! - [`executor`]: the public face ([`Executor`], [`ExecutorHandle`], [`GrantRequest`],
//!   [`Report`]) and its threads.
//! - `scheduler` (private): every decision (grants, limits, ordering,
//!   retries, reconciliation) as a state machine with time passed in, tested without
//!   threads or sleeping.
//! - [`bucket`]: the token bucket that limits firewall operations.
//! - `pace` (private): the firewall's measured speed, which spaces new grants so that
//!   their closes keep up.
//! - [`journal`]: the grant journal under the state directory.
//! - [`runner`]: running a command line (`/bin/sh -c`, in its own process group).
//! - [`backend`]: the `Backend` trait every firewall backend implements.
#![deny(unsafe_code)]

pub mod backend;
pub mod bucket;
pub mod executor;
pub mod journal;
mod pace;
pub mod runner;
mod scheduler;

pub use executor::{
    Action, BackendResolver, Executor, ExecutorConfig, ExecutorError, ExecutorHandle, GrantRequest, OpKind,
    OpResult, Refusal, Report, Stats,
};
pub use runner::{CommandRunner, Outcome, ShellRunner};
pub use scheduler::{RETRY_BASE, TRIES};

/// knockd's `%IP%` substitution: every occurrence, literally and case-sensitively.
pub fn substitute(command: &str, ip: &str) -> String {
    command.replace("%IP%", ip)
}

#[cfg(test)]
mod tests {
    #[test]
    fn substitutes_every_ip_token_case_sensitively() {
        assert_eq!(
            super::substitute("iptables -I INPUT -s %IP% -j ACCEPT; echo %IP% %ip% %IP", "198.18.0.2"),
            "iptables -I INPUT -s 198.18.0.2 -j ACCEPT; echo 198.18.0.2 %ip% %IP"
        );
        assert_eq!(super::substitute("no token", "::1"), "no token");
    }
}
