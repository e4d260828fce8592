//! Lock descriptions. `rados_list_lockers` returns each holder's client,
//! cookie and address but not the description it locked with, so the
//! descriptions come from the `lock` object class's `get_info` method
//! (what `rados_list_lockers` calls underneath), whose reply is decoded
//! here. Ceph's encoding: every struct starts with a version, a compat
//! version and its length (u8, u8, u32 LE), which lets the decoder skip
//! fields it does not need (the lock holder's address) by length.

use std::collections::BTreeMap;
use std::ffi::c_char;

use crate::client::{cstr, Client};
use crate::{sys, Error, Result};

/// (client, cookie) → description.
pub(crate) type Descriptions = BTreeMap<(String, String), String>;

/// `cls_lock_get_info_op { name }`.
fn encode_request(name: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u32).to_le_bytes());
    body.extend_from_slice(name.as_bytes());
    let mut out = vec![1u8, 1u8];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        self.take(n).map(|b| String::from_utf8_lossy(b).into_owned())
    }
    /// A struct's header: returns a reader over its body and advances
    /// past it.
    fn versioned(&mut self) -> Option<Reader<'a>> {
        let _v = self.u8()?;
        let _compat = self.u8()?;
        let len = self.u32()? as usize;
        self.take(len).map(|b| Reader { b })
    }
}

/// `entity_name_t` as Ceph prints it (`client.4110`).
fn entity_name(t: u8, num: i64) -> String {
    let kind = match t {
        0x01 => "mon",
        0x02 => "mds",
        0x04 => "osd",
        0x08 => "client",
        0x10 => "mgr",
        _ => "unknown",
    };
    format!("{kind}.{num}")
}

/// Decodes `cls_lock_get_info_reply`'s lockers into descriptions.
pub(crate) fn decode_reply(b: &[u8]) -> Option<Descriptions> {
    let mut r = Reader { b };
    let mut body = r.versioned()?;
    let n = body.u32()?;
    let mut out = Descriptions::new();
    for _ in 0..n {
        let mut id = body.versioned()?;
        let t = id.u8()?;
        let num = id.i64()?;
        let cookie = id.string()?;
        let mut info = body.versioned()?;
        let _expiration = info.take(8)?;
        // entity_addr_t: marker 1 = a versioned struct; 0 = the legacy
        // fixed form (u32 0, u32 nonce, 128-byte sockaddr_storage).
        match info.b.first()? {
            1 => {
                info.take(1)?;
                info.versioned()?;
            }
            _ => {
                info.take(4 + 4 + 128)?;
            }
        }
        let description = info.string()?;
        out.insert((entity_name(t, num), cookie), description);
    }
    Some(out)
}

impl Client {
    /// The descriptions of `name`'s holders on `pool/oid`.
    pub(crate) fn lock_descriptions(
        &self,
        io: &crate::client::IoCtxRef<'_>,
        pool: &str,
        oid: &str,
        name: &str,
    ) -> Result<Descriptions> {
        let op = format!("lock info of {name} on {pool}/{oid}");
        let coid = cstr("object", oid)?;
        let (cls, method) = (cstr("class", "lock")?, cstr("method", "get_info")?);
        let req = encode_request(name);
        let mut size = 4096usize;
        loop {
            let mut buf = vec![0u8; size];
            // SAFETY: live pool context; req and buf live across the call,
            // librados writes at most buf.len() bytes.
            let rc = unsafe {
                sys::rados_exec(
                    io.raw(),
                    coid.as_ptr(),
                    cls.as_ptr(),
                    method.as_ptr(),
                    req.as_ptr() as *const c_char,
                    req.len(),
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len(),
                )
            };
            if rc == -libc::ERANGE && size < 16 << 20 {
                size *= 4;
                continue;
            }
            if rc == -libc::ENOENT {
                return Ok(Descriptions::new());
            }
            let n = crate::error::check(rc.into(), || op.clone())? as usize;
            return decode_reply(&buf[..n]).ok_or_else(|| Error::Other {
                op: format!("{op}: undecodable reply from the lock class"),
                errno: libc::EBADMSG,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versioned(body: &[u8]) -> Vec<u8> {
        let mut v = vec![1u8, 1u8];
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn the_request_is_a_versioned_name() {
        assert_eq!(encode_request("ab"), [1, 1, 6, 0, 0, 0, 2, 0, 0, 0, b'a', b'b']);
    }

    #[test]
    fn replies_decode_with_both_address_forms() {
        let mut lockers = 2u32.to_le_bytes().to_vec();
        // client.4110, cookie node-a, new-style address
        let mut id = vec![0x08];
        id.extend_from_slice(&4110i64.to_le_bytes());
        id.extend(string("node-a"));
        lockers.extend(versioned(&id));
        let mut info = vec![0u8; 8];
        info.push(1);
        info.extend(versioned(&[2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]));
        info.extend(string(r#"{"node":"node-a"}"#));
        lockers.extend(versioned(&info));
        // client.7, cookie c, legacy address
        let mut id = vec![0x08];
        id.extend_from_slice(&7i64.to_le_bytes());
        id.extend(string("c"));
        lockers.extend(versioned(&id));
        let mut info = vec![0u8; 8];
        info.extend(vec![0u8; 136]);
        info.extend(string("legacy"));
        lockers.extend(versioned(&info));
        lockers.push(1); // exclusive
        lockers.extend(string(""));
        let d = decode_reply(&versioned(&lockers)).unwrap();
        assert_eq!(d[&("client.4110".to_string(), "node-a".to_string())], r#"{"node":"node-a"}"#);
        assert_eq!(d[&("client.7".to_string(), "c".to_string())], "legacy");
        assert!(decode_reply(&[1, 1, 200, 0, 0, 0]).is_none(), "truncated input");
    }
}
