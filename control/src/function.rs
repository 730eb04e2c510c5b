//! Functions as the services take them: the one rule for what a function name is, used by the
//! master when a function is registered and by the REST routes when a call names one.

use crate::error::Error;

/// The longest function name.
pub const MAX_NAME: usize = 128;

/// Checks a function name: 1-128 characters of a-z, A-Z, 0-9, '-', '_' or '@' ('@' admits
/// openYuanrong's function-service names, `0@service@func`). The error names the field `name`.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(name_char) {
        return Err(Error::invalid(
            "name",
            format!("{name:?} must be 1-{MAX_NAME} characters of a-z, A-Z, 0-9, '-', '_' or '@'"),
        ));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '@'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["hello", "0@svc@func", "a-b_c", &"x".repeat(MAX_NAME)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "a:b", "é", &"x".repeat(MAX_NAME + 1)] {
            let e = check_name(bad).expect_err(bad);
            assert!(e.to_string().starts_with("name: "), "{e}");
        }
    }
}
