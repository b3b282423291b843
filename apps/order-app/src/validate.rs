//! Field checks shared by the request types.

use crate::ApiError;

/// Longest accepted identifier (sku, user, order id).
pub const MAX_TEXT_LEN: usize = 256;

/// `value` must hold something other than whitespace and be at most
/// [`MAX_TEXT_LEN`] bytes.
pub fn non_empty(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "`{field}` must be a non-empty string"
        )));
    }
    if value.len() > MAX_TEXT_LEN {
        return Err(ApiError::bad_request(format!(
            "`{field}` must be at most {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(())
}

/// `value` must lie in `min..=max`.
pub fn in_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{field}` must be an integer between {min} and {max}, got {value}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks() {
        assert!(non_empty("sku", "a").is_ok());
        assert!(non_empty("sku", " \t").is_err());
        assert!(non_empty("sku", &"x".repeat(MAX_TEXT_LEN + 1)).is_err());
    }

    #[test]
    fn range_checks() {
        assert!(in_range("quantity", 1, 1, 10).is_ok());
        assert!(in_range("quantity", 0, 1, 10).is_err());
        assert!(in_range("quantity", 11, 1, 10).is_err());
    }
}
