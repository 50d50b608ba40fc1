//! Network interface queries: index by name, and every IPv4/IPv6 address of an
//! interface (IPv6 link-local included, as knockd listens on those too).

use std::net::IpAddr;

use crate::error::CaptureError;
use crate::sys;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = 15;

/// Whether `ifname` could name an interface: 1..=15 bytes, no NUL, `/`, `:` or whitespace
/// (`dev_valid_name()` in the kernel; `:` marks old-style aliases, which are not devices).
pub fn valid_name(ifname: &str) -> bool {
    !ifname.is_empty()
        && ifname.len() <= MAX_NAME_LEN
        && ifname != "."
        && ifname != ".."
        && !ifname.bytes().any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// The interface index of `ifname`, in the caller's network namespace.
pub fn index(ifname: &str) -> Result<u32, CaptureError> {
    if !valid_name(ifname) {
        return Err(CaptureError::InvalidInterfaceName(ifname.to_owned()));
    }
    sys::if_nametoindex(ifname).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => CaptureError::NoSuchInterface(ifname.to_owned()),
        _ => CaptureError::sys("if_nametoindex", ifname, e),
    })
}

/// Whether an interface called `ifname` exists.
pub fn exists(ifname: &str) -> bool {
    index(ifname).is_ok()
}

/// Every IPv4 and IPv6 address of `ifname`, in the order the kernel lists them,
/// without duplicates. Empty when the interface has no address (yet).
pub fn addresses(ifname: &str) -> Result<Vec<IpAddr>, CaptureError> {
    index(ifname)?;
    let all = sys::interface_addresses().map_err(CaptureError::Addresses)?;
    let mut out: Vec<IpAddr> = Vec::new();
    for (name, addr) in all {
        if name == ifname && !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_has_its_addresses() {
        assert!(exists("lo"));
        assert_eq!(index("lo").unwrap(), 1);
        let addrs = addresses("lo").unwrap();
        // lo is up in every namespace that runs tests; its v4 address is always there.
        assert!(addrs.contains(&IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)), "{addrs:?}");
    }

    #[test]
    fn missing_and_invalid_names() {
        assert!(!exists("sesame-nope0"));
        assert!(
            matches!(index("sesame-nope0"), Err(CaptureError::NoSuchInterface(n)) if n == "sesame-nope0")
        );
        assert!(matches!(addresses("sesame-nope0"), Err(CaptureError::NoSuchInterface(_))));
        for bad in ["", "a/b", "a b", "x\0y", "sixteen-chars-xx", ".", "eth0:1"] {
            assert!(matches!(index(bad), Err(CaptureError::InvalidInterfaceName(_))), "{bad:?}");
            assert!(!exists(bad));
        }
    }
}
