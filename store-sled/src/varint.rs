//! LEB128 varints for the binary envelope: small numbers (versions, lengths) take one byte.

pub fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Zigzag, so that small negative numbers stay small too.
pub fn put_signed(out: &mut Vec<u8>, n: i64) {
    put(out, ((n << 1) ^ (n >> 63)) as u64);
}

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads what the functions above wrote; every error says what was cut short or out of range.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub fn byte(&mut self) -> Result<u8, String> {
        let (&first, rest) = self.bytes.split_first().ok_or("cut short")?;
        self.bytes = rest;
        Ok(first)
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return if shift == 63 && b > 1 { Err("varint overflows 64 bits".into()) } else { Ok(n) };
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        let z = self.u64()?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    pub fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        self.string_of(len)
    }

    pub fn string_of(&mut self, len: u64) -> Result<String, String> {
        let len = usize::try_from(len).ok().filter(|&l| l <= self.bytes.len()).ok_or("a string longer than what is left")?;
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(text).map(str::to_string).map_err(|e| format!("a string that is not UTF-8: {e}"))
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_cut_short() {
        let numbers = [0u64, 1, 127, 128, 300, u32::MAX.into(), u64::MAX];
        let signed = [0i64, -1, 1, -64, 64, 28_800, -28_800, i64::MIN, i64::MAX];
        let mut out = Vec::new();
        numbers.iter().for_each(|&n| put(&mut out, n));
        signed.iter().for_each(|&n| put_signed(&mut out, n));
        put_bytes(&mut out, "account-é".as_bytes());
        let mut r = Reader::new(&out);
        assert_eq!(numbers.map(|_| r.u64().unwrap()), numbers);
        assert_eq!(signed.map(|_| r.i64().unwrap()), signed);
        assert_eq!(r.string().unwrap(), "account-é");
        assert!(r.rest().is_empty());
        assert!(Reader::new(&[0x80, 0x80]).u64().is_err(), "cut short");
        assert!(Reader::new(&[0xff; 10]).u64().is_err(), "more than 64 bits");
        assert!(Reader::new(&[5, b'a']).string().is_err(), "longer than what is left");
        assert!(Reader::new(&[1, 0xff]).string().is_err(), "not UTF-8");
    }
}
