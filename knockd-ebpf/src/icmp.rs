//! ICMP echo knocks (`icmp:N`): an echo request (ICMPv6 for v6) whose
//! payload, the bytes after the 8-byte ICMP header, is N bytes long. The
//! length comes from the IP header, as Linux trims the frame to it, so
//! Ethernet padding never changes it.

use aya_ebpf::programs::XdpContext;
use knockd_common::{FAMILY_V4, ICMP_SLOTS};

use crate::parse::{payload_end, ptr_at, read_be16, L4};

const ICMP_HLEN: usize = 8;
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REQUEST_V6: u8 = 128;

/// The payload length of an echo request with a knock slot, else `None`.
#[inline(always)]
pub fn echo_len(ctx: &XdpContext, l4: &L4) -> Option<u16> {
    // SAFETY: ptr_at checked the whole header lies inside the frame.
    let kind = unsafe { (*ptr_at::<[u8; ICMP_HLEN]>(ctx, l4.l4)?)[0] };
    let end = if l4.family == FAMILY_V4 {
        if kind != ECHO_REQUEST_V4 {
            return None;
        }
        l4.l3 + read_be16(ctx, l4.l3 + 2)? as usize
    } else {
        if kind != ECHO_REQUEST_V6 {
            return None;
        }
        payload_end(ctx, l4.l3)?
    };
    // Linux drops a datagram longer than its frame, or too short for the header.
    if end > ctx.data_end() - ctx.data() {
        return None;
    }
    let len = end.checked_sub(l4.l4 + ICMP_HLEN)?;
    (len < ICMP_SLOTS as usize).then_some(len as u16)
}
