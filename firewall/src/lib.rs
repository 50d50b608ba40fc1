//! Opening and closing access: knockd-style commands run off the packet path,
//! with stop commands fired by a timer and repeat knocks de-duplicated.
//!
//! - [`grants`]: which (door, address) pairs are open and until when; pure logic
//!   with time passed in, so it is tested without sleeping.
//! - [`runner`]: the one narrow interface to the outside world, running a command
//!   line (`/bin/sh -c` in production).
//! - [`backend`]: the `Backend` trait every firewall backend implements.
//! - [`executor`]: the threads: a timer that owns the grant table and a runner that
//!   executes commands in order, reporting what happened as [`Report`]s.
#![deny(unsafe_code)]

pub mod backend;
pub mod executor;
pub mod grants;
pub mod runner;

pub use executor::{Executor, ExecutorHandle, GrantRequest, Report};
pub use runner::{CommandRunner, ShellRunner};

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
