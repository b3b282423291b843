//! Header maps read from Envoy without assuming they are UTF-8.
//!
//! HTTP allows any byte from 0x80 up in a header value (obs-text) and Envoy
//! passes such values through, but the proxy-wasm SDK's header getters
//! `unwrap()` a UTF-8 conversion: one request carrying `x-name: caf\xe9`
//! panics the VM, and every later request on that worker then fails as the
//! plugin's fail strategy says. These readers turn invalid bytes into U+FFFD
//! instead, so such a value simply matches no configured string.
//!
//! A map is read once into the buffer the host hands over ([`map_buffer`])
//! and decoded into slices of it ([`decode_map`]): nothing is copied unless a
//! name or value is not UTF-8.

use crate::stage;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::borrow::Cow;
use std::rc::Rc;

/// One header as decoded from a host buffer: borrowed from it when valid UTF-8.
pub type Header<'a> = (Cow<'a, str>, Cow<'a, str>);

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// Decodes proxy-wasm's header-map serialisation: a little-endian `u32` pair
/// count, each pair's name and value lengths (`u32` each), then every name
/// and value followed by a NUL. Invalid UTF-8 becomes U+FFFD; a truncated
/// buffer yields the pairs that are complete, NUL included.
pub fn decode_map(bytes: &[u8]) -> Vec<Header<'_>> {
    let pairs = RawPairs::new(bytes);
    // Sized once from the count (`collect` would grow from nothing).
    let mut decoded = Vec::with_capacity(pairs.size_hint().1.unwrap_or(0));
    decoded.extend(pairs.map(|(name, value)| (text_of(name), text_of(value))));
    decoded
}

/// The complete pairs of a serialised map as bytes, unchecked for UTF-8.
struct RawPairs<'a> {
    bytes: &'a [u8],
    count: usize,
    index: usize,
    /// Where the next name starts.
    data: usize,
}

impl<'a> RawPairs<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let count = Self::read_u32(bytes, 0).unwrap_or(0);
        Self {
            bytes,
            count,
            index: 0,
            data: 4usize.saturating_add(count.saturating_mul(8)),
        }
    }

    fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
        bytes
            .get(at..)
            .and_then(<[u8]>::first_chunk::<4>)
            .map(|b| u32::from_le_bytes(*b) as usize)
    }

    /// `len` bytes at the cursor, which must be followed by a NUL.
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.data.checked_add(len)?;
        let text = self.bytes.get(self.data..end)?;
        if self.bytes.get(end) != Some(&0) {
            return None;
        }
        self.data = end + 1;
        Some(text)
    }
}

impl<'a> Iterator for RawPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let lengths = 4usize.saturating_add(self.index.saturating_mul(8));
        self.index += 1;
        let pair = Self::read_u32(self.bytes, lengths)
            .zip(Self::read_u32(self.bytes, lengths.saturating_add(4)))
            .and_then(|(name_len, value_len)| Some((self.take(name_len)?, self.take(value_len)?)));
        if pair.is_none() {
            // A truncated buffer: nothing after it is a pair.
            self.index = self.count;
        }
        pair
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // A pair takes at least 10 bytes (two lengths, two NULs).
        let left = self.count.saturating_sub(self.index);
        (0, Some(left.min(self.bytes.len() / 10)))
    }
}

/// `bytes` as text, borrowed; invalid UTF-8 as an owned copy with U+FFFD.
/// Valid text (nearly always) takes `from_utf8`'s fast path.
fn text_of(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Glue: the serialised pairs of a header map of the current stream (or, for
/// `HttpCallResponseHeaders`, of the HTTP call being answered), as the host
/// handed them over, for [`decode_map`]; empty when there is no such map.
/// Inside a staged chain the stages share one read per callback ([`stage`]).
pub fn map_buffer(map_type: MapType) -> Rc<Vec<u8>> {
    stage::header_map(map_type, || Rc::new(read_map(map_type)))
}

fn read_map(map_type: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: on success the host hands over a buffer of `size` bytes it
    // allocated through the SDK's `proxy_on_memory_allocate` (a forgotten
    // `Vec<u8>` of that capacity), which this function now owns.
    let status = unsafe { proxy_get_header_map_pairs(map_type as u32, &mut data, &mut size) };
    if status != 0 || data.is_null() {
        return Vec::new();
    }
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Glue: every pair of a header map, copied out of the host buffer.
pub fn map(map_type: MapType) -> Vec<(String, String)> {
    decode_map(&map_buffer(map_type))
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

/// Glue: the first value of header `name` in a map of the current stream.
/// Inside a staged chain the whole map is read (once) instead: the other
/// stages read it too, and one map read costs less than two header reads.
pub fn value(map_type: MapType, name: &str) -> Option<String> {
    if stage::in_stream() {
        return crate::headers::find(&decode_map(&map_buffer(map_type)), name).map(str::to_owned);
    }
    match hostcalls::get_map_value_bytes(map_type, name) {
        Ok(Some(bytes)) => Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned()),
        ),
        _ => None,
    }
}

/// Glue: replaces every value of header `name` (`None` removes them) in a
/// map of the current stream. Every filter writes headers through here so a
/// staged chain's later stages see the write ([`stage`]).
pub fn set(map_type: MapType, name: &str, value: Option<&str>) {
    #[allow(clippy::disallowed_methods)] // the one place that may
    let written = hostcalls::set_map_value(map_type, name, value);
    match written {
        Ok(()) => stage::note_header_write(map_type, HeaderWrite::set(name, value)),
        Err(status) => log::warn!("could not set header {name}: {status:?}"),
    }
}

/// Glue: adds a value of header `name` to a map of the current stream,
/// keeping the values it has ([`set`] says why through here).
pub fn add(map_type: MapType, name: &str, value: &str) {
    #[allow(clippy::disallowed_methods)] // the one place that may
    let written = hostcalls::add_map_value(map_type, name, value);
    match written {
        Ok(()) => stage::note_header_write(map_type, HeaderWrite::add(name, value)),
        Err(status) => log::warn!("could not add header {name}: {status:?}"),
    }
}

/// Serialises pairs the way the host hands a header map over.
pub fn encode_map<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let length = |bytes: &[u8]| u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes();
    let count = u32::try_from(pairs.len()).unwrap_or(u32::MAX);
    // Sized once: growing from nothing reallocated a staged chain's ~1 kB
    // request map about eight times per write (bench/native-replay).
    let text: usize = pairs
        .iter()
        .map(|(name, value)| name.as_ref().len() + value.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + 8 * pairs.len() + text);
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&length(name.as_ref()));
        out.extend_from_slice(&length(value.as_ref()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

/// A header write as Envoy applies it to its map: `setCopy`/`remove` drop
/// every value of the (lower-cased) name, then a set value is appended (a
/// pseudo-header after the other pseudo-headers, where Envoy keeps them);
/// `addCopy` appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderWrite {
    name: String,
    value: Option<String>,
    keep_others: bool,
}

impl HeaderWrite {
    pub fn set(name: &str, value: Option<&str>) -> Self {
        Self {
            name: name.to_ascii_lowercase(),
            value: value.map(str::to_owned),
            keep_others: false,
        }
    }

    pub fn add(name: &str, value: &str) -> Self {
        Self {
            name: name.to_ascii_lowercase(),
            value: Some(value.to_owned()),
            keep_others: true,
        }
    }
}

/// `map` (serialised) after `writes`, in order: one pass over the pairs and
/// one encoding, whatever the number of writes.
pub fn with_writes(map: &[u8], writes: &[HeaderWrite]) -> Vec<u8> {
    let raw = RawPairs::new(map);
    let mut pairs = Vec::with_capacity(raw.size_hint().1.unwrap_or(0).saturating_add(writes.len()));
    pairs.extend(raw);
    for write in writes {
        let name = write.name.as_bytes();
        if !write.keep_others {
            pairs.retain(|(existing, _)| *existing != name);
        }
        if let Some(value) = &write.value {
            let at = if name.starts_with(b":") {
                pairs
                    .iter()
                    .take_while(|(n, _)| n.starts_with(b":"))
                    .count()
            } else {
                pairs.len()
            };
            pairs.insert(at, (name, value.as_bytes()));
        }
    }
    encode_map(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        encode_map(pairs)
    }

    fn owned(pairs: Vec<Header<'_>>) -> Vec<(String, String)> {
        pairs
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }

    #[test]
    fn decodes_pairs_in_order() {
        let bytes = encode(&[
            (b":path", b"/orders?a=1"),
            (b"x-empty", b""),
            (b"x-a", b"2"),
        ]);
        let pairs = decode_map(&bytes);
        assert!(pairs
            .iter()
            .all(|(name, value)| matches!((name, value), (Cow::Borrowed(_), Cow::Borrowed(_)))));
        assert_eq!(
            owned(pairs),
            vec![
                (":path".to_owned(), "/orders?a=1".to_owned()),
                ("x-empty".to_owned(), String::new()),
                ("x-a".to_owned(), "2".to_owned()),
            ]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let bytes = encode(&[(b"x-name", b"caf\xe9"), (b"x-next", b"ok")]);
        assert_eq!(
            owned(decode_map(&bytes)),
            vec![
                ("x-name".to_owned(), "caf\u{fffd}".to_owned()),
                ("x-next".to_owned(), "ok".to_owned()),
            ]
        );
    }

    #[test]
    fn empty_and_truncated_buffers_yield_the_complete_pairs_only() {
        assert!(decode_map(&[]).is_empty());
        assert!(decode_map(&[1, 0]).is_empty());
        let bytes = encode(&[(b"x-a", b"1"), (b"x-b", b"22")]);
        for cut in 0..bytes.len() {
            let pairs = decode_map(&bytes[..cut]);
            assert!(pairs.len() <= 1, "cut at {cut}: {pairs:?}");
        }
        assert_eq!(decode_map(&bytes).len(), 2);
    }

    #[test]
    fn a_count_larger_than_the_buffer_does_not_allocate_or_panic() {
        let mut bytes = encode(&[(b"x-a", b"1")]);
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_map(&bytes).len() <= 1);
    }

    fn headers_named(map: &[u8], name: &str) -> Vec<String> {
        owned(decode_map(map))
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn a_header_set_replaces_every_value_as_envoy_does() {
        let map = encode_map(&[
            (":method", "GET"),
            (":path", "/a"),
            ("cookie", "a=1"),
            ("x", "1"),
            ("cookie", "b=2"),
        ]);
        let set = with_writes(&map, &[HeaderWrite::set("Cookie", Some("c=3"))]);
        assert_eq!(
            owned(decode_map(&set)),
            [
                (":method", "GET"),
                (":path", "/a"),
                ("x", "1"),
                ("cookie", "c=3")
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        let added = with_writes(&set, &[HeaderWrite::add("Cookie", "d=4")]);
        assert_eq!(headers_named(&added, "cookie"), ["c=3", "d=4"]);
        let removed = with_writes(&set, &[HeaderWrite::set("cookie", None)]);
        assert_eq!(decode_map(&removed).len(), 3);
        let pseudo = with_writes(&map, &[HeaderWrite::set(":path", Some("/b"))]);
        assert_eq!(
            decode_map(&pseudo)
                .get(1)
                .map(|(n, v)| (n.as_ref(), v.as_ref())),
            Some((":path", "/b"))
        );
    }

    #[test]
    fn writes_apply_in_order() {
        let map = encode_map(&[(":path", "/a"), ("x", "1")]);
        let writes = [
            HeaderWrite::add("x", "2"),
            HeaderWrite::set("y", Some("3")),
            HeaderWrite::set("x", None),
            HeaderWrite::add("X", "4"),
        ];
        assert_eq!(
            owned(decode_map(&with_writes(&map, &writes))),
            [(":path", "/a"), ("y", "3"), ("x", "4")].map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }
}
