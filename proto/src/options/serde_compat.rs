//! Reading records that older versions wrote, where a zero or an empty
//! string stood for "not set".

use serde::{Deserialize, Deserializer};

/// `Option<T>` from a record that may hold `T`'s zero value (or null) for
/// "none": both read as `None`.
pub(crate) fn zero_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq,
{
    Ok(Option::<T>::deserialize(deserializer)?.filter(|value| *value != T::default()))
}

/// An optional id from a record that may hold an empty string for "none".
pub(crate) fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    Ok(Option::<String>::deserialize(deserializer)?
        .filter(|id| !id.is_empty())
        .map(T::from))
}
