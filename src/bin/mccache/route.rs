//! `--interface-from-route`: the IPv4 address of the interface that holds the default route.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

/// The default route's gateway and interface from `/proc/net/route` text, if there is one.
///
/// Columns: `Iface Destination Gateway Flags ...`, addresses in little-endian hex.
pub fn default_route(table: &str) -> Option<(String, Ipv4Addr)> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, gw, mask) = (cols.first()?, cols.get(1)?, cols.get(2)?, cols.get(7)?);
        if *dest != "00000000" || *mask != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(gw, 16).ok()?;
        Some((iface.to_string(), Ipv4Addr::from(gw.swap_bytes())))
    })
}

/// The source address the kernel picks towards the default route: a UDP socket is connected
/// (nothing is sent) to the default gateway, or to `fallback` when the default route has no
/// gateway, and its local address read back.
pub fn interface_from_route(fallback: Ipv4Addr) -> Result<Ipv4Addr, String> {
    let table = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| format!("cannot read /proc/net/route: {e}"))?;
    let (iface, gw) =
        default_route(&table).ok_or("no default route in /proc/net/route".to_string())?;
    let target = if gw.is_unspecified() { fallback } else { gw };
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| format!("socket: {e}"))?;
    sock.connect(SocketAddrV4::new(target, 9))
        .map_err(|e| format!("no route to {target} (default route via {iface}): {e}"))?;
    match sock.local_addr().map_err(|e| e.to_string())?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
        other => Err(format!(
            "default route via {iface} gives no IPv4 source ({other})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0011A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_route(table),
            Some(("eth0".to_string(), Ipv4Addr::new(172, 17, 0, 1)))
        );
        assert_eq!(default_route("Iface\tDestination\n"), None);
    }
}
