//! Compressed qcow2 clusters: a raw deflate stream per cluster.

/// Inflates a raw deflate stream (qcow2 compressed cluster) into at most `out_len` bytes.
pub(super) fn inflate_raw(input: &[u8], out_len: usize) -> std::result::Result<Vec<u8>, String> {
    use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};
    let mut out = vec![0u8; out_len];
    let mut d = DecompressorOxide::new();
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _, written) = decompress(&mut d, input, &mut out, 0, flags);
    use miniz_oxide::inflate::TINFLStatus;
    match status {
        TINFLStatus::Done | TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput
            if written == out_len =>
        {
            Ok(out)
        }
        s => Err(format!("{s:?} after {written} bytes")),
    }
}
