//! Per-(proto, port) arrays kept in step with a userspace shadow, so a sync
//! writes only the slots that change instead of all 131072.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData, MapError};

/// Makes `array` hold `wanted` (every other slot at its default). New and
/// changed slots are written before stale ones are cleared.
pub fn sync<M, V>(
    array: &mut Array<M, V>,
    shadow: &mut BTreeMap<u32, V>,
    wanted: BTreeMap<u32, V>,
) -> Result<(), MapError>
where
    M: std::borrow::BorrowMut<MapData>,
    V: aya::Pod + Default + PartialEq,
{
    for (&slot, v) in &wanted {
        if shadow.get(&slot) != Some(v) {
            array.set(slot, v, 0)?;
        }
    }
    for &slot in shadow.keys().filter(|s| !wanted.contains_key(s)) {
        array.set(slot, V::default(), 0)?;
    }
    *shadow = wanted;
    Ok(())
}

/// The non-default slots of an array some earlier run filled (a pinned map).
pub fn scan<M, V>(array: &Array<M, V>) -> BTreeMap<u32, V>
where
    M: std::borrow::Borrow<MapData>,
    V: aya::Pod + Default + PartialEq,
{
    (0..array.len())
        .filter_map(|i| array.get(&i, 0).ok().filter(|v| *v != V::default()).map(|v| (i, v)))
        .collect()
}
