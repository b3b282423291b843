//! What several fuzz targets share: splitting one input into text fields.

/// The input as text (lossy, so every byte string reaches the parsers) cut
/// into `N` fields at its first `N - 1` newlines; missing fields are empty.
pub fn fields<const N: usize>(data: &[u8]) -> [String; N] {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(N, '\n');
    std::array::from_fn(|_| parts.next().unwrap_or_default().to_owned())
}
