//! The orders a scenario sends, drawn from the seeded names.

use rand::seq::SliceRandom;
use rand::Rng;
use txlab_api::order::{CreateOrder, OrderItem};

use crate::spec::{OrderTemplate, SeedPlan};

/// Builds the order for one arrival. `any` draws from the seeded pool;
/// a fixed SKU gives single-line orders so the scenario's effect is clear.
pub fn make_order(t: &OrderTemplate, seed: &SeedPlan, rng: &mut impl Rng) -> CreateOrder {
    let pick = |value: &str, pool: &[String], rng: &mut dyn rand::RngCore| -> String {
        if value == "any" {
            pool.choose(rng).cloned().unwrap_or_default()
        } else {
            value.to_string()
        }
    };
    let customer = pick(&t.customer, &seed.customers, rng);
    let slot = pick(&t.slot, &seed.slots, rng);
    let items = if t.sku == "any" {
        let lines = rng.gen_range(1..=t.max_lines.max(1)) as usize;
        seed.skus
            .choose_multiple(rng, lines)
            .map(|sku| OrderItem {
                sku: sku.clone(),
                qty: rng.gen_range(1..=2),
                unit_price: rng.gen_range(100..=5_000),
            })
            .collect()
    } else {
        vec![OrderItem {
            sku: t.sku.clone(),
            qty: 1,
            unit_price: rng.gen_range(100..=5_000),
        }]
    };
    CreateOrder {
        customer,
        items,
        slot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SeedData;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn orders_draw_from_the_seeded_pool_and_honour_fixed_names() {
        let seed = SeedPlan::new(&SeedData::default());
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..200 {
            let o = make_order(&OrderTemplate::default(), &seed, &mut rng);
            o.validate().unwrap();
            assert!(seed.customers.contains(&o.customer));
            assert!(seed.slots.contains(&o.slot));
            assert!((1..=3).contains(&o.items.len()));
            let mut skus: Vec<_> = o.items.iter().map(|i| &i.sku).collect();
            skus.dedup();
            assert_eq!(skus.len(), o.items.len(), "distinct SKUs per order");
        }
        let broke = OrderTemplate {
            customer: "broke".into(),
            sku: "sold-out".into(),
            ..OrderTemplate::default()
        };
        let o = make_order(&broke, &seed, &mut rng);
        assert_eq!(
            (o.customer.as_str(), o.items.len(), o.items[0].sku.as_str()),
            ("broke", 1, "sold-out")
        );
    }
}
