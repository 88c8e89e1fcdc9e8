//! Varints, as deltas and signatures write lengths and counts: unsigned
//! LEB128, at most 10 bytes, in their shortest form (a padded encoding is
//! refused, so one value has one byte form).

/// Appends `v` as a varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint from the front of `input`; `None` when it is cut short,
/// overflows 64 bits or is not in its shortest form.
pub(crate) fn get_varint(input: &mut &[u8]) -> Option<u64> {
    decode(|| {
        let (&b, rest) = input.split_first().ok_or(())?;
        *input = rest;
        Ok::<u8, ()>(b)
    })
    .ok()
    .flatten()
}

/// Reads one varint a byte at a time from `next`: `Ok(None)` when it
/// overflows 64 bits or is not in its shortest form; `next`'s error as is.
pub(crate) fn decode<E>(mut next: impl FnMut() -> Result<u8, E>) -> Result<Option<u64>, E> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = next()?;
        if (i == 9 && b > 1) || (i > 0 && b == 0) {
            // Overflow, or a padded (non-canonical) encoding.
            return Ok(None);
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Ok(None)
}
