//! The accountant against published figures.

use quiver_federation::dp::{Budget, RdpAccountant, calibrate_noise};

/// Opacus' own accountant test (pytorch/opacus, `opacus/tests/accountants_test.py`,
/// `test_rdp_accountant`): noise multiplier 1.5, sampling rate 0.04, int(90 / 0.04) =
/// 2250 steps, δ = 1e-5 gives ε = 7.32911117143 over Opacus' default orders with the
/// Balle et al. (2020) conversion.
#[test]
fn reproduces_opacus_published_epsilon() {
    let mut acc = RdpAccountant::new();
    for _ in 0..2250 {
        acc.compose_subsampled_gaussian(0.04, 1.5, 1).unwrap();
    }
    let (eps, _) = acc.epsilon(1e-5).unwrap();
    assert!((eps - 7.329_111_171_43).abs() < 1e-6, "ε = {eps}");
}

/// The example in Opacus' `opacus/accountants/analysis/rdp.py` docstring: two
/// compositions [(q = 1e-5, σ = 1.0, 10 steps), (q = 1e-4, σ = 3.0, 4 steps)] over
/// orders 2..=32 at δ = 1e-5 give ε ≈ 0.336 at order 23.
#[test]
fn reproduces_the_documented_two_phase_example() {
    let orders: Vec<f64> = (2..=32).map(f64::from).collect();
    let mut acc = RdpAccountant::with_orders(orders).unwrap();
    acc.compose_subsampled_gaussian(1e-5, 1.0, 10).unwrap();
    acc.compose_subsampled_gaussian(1e-4, 3.0, 4).unwrap();
    let (eps, order) = acc.epsilon(1e-5).unwrap();
    assert!((eps - 0.336).abs() < 5e-4, "ε = {eps}");
    assert_eq!(order, 23.0);
}

#[test]
fn more_noise_or_fewer_steps_spend_less() {
    let eps = |q: f64, s: f64, t: u64| {
        let mut a = RdpAccountant::new();
        a.compose_subsampled_gaussian(q, s, t).unwrap();
        a.epsilon(1e-5).unwrap().0
    };
    assert!(eps(0.01, 2.0, 1000) < eps(0.01, 1.0, 1000));
    assert!(eps(0.01, 1.0, 100) < eps(0.01, 1.0, 1000));
    assert!(eps(0.001, 1.0, 1000) < eps(0.01, 1.0, 1000));
    let b = Budget::default();
    assert!(calibrate_noise(0.01, 1000, b).unwrap() > calibrate_noise(0.01, 100, b).unwrap());
}

#[test]
fn bad_parameters_are_refused() {
    let mut a = RdpAccountant::new();
    assert!(a.compose_subsampled_gaussian(1.5, 1.0, 1).is_err());
    assert!(a.compose_subsampled_gaussian(0.1, 0.0, 1).is_err());
    assert!(a.compose_subsampled_gaussian(0.1, f64::NAN, 1).is_err());
    assert!(a.epsilon(0.0).is_err());
    assert!(RdpAccountant::with_orders(vec![0.5]).is_err());
    assert!(
        Budget {
            epsilon: -1.0,
            delta: 1e-5
        }
        .validate()
        .is_err()
    );
}
