// The scalar math of an XSAM step on the device-scalar vector `sc` (float64), shared by
// the C++ CPU backend (run on the host) and the CUDA backend (run by one device thread).
// Indices and semantics: xsam_fast/backends/base.py; the definition these follow, and are
// tested against, is xsam_fast/coefficients.py (ascent_scalars, update_scalars,
// plain_scalars, ascent_scale_of). Everything is computed in double.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define XSAM_HD __host__ __device__ __forceinline__
#else
#define XSAM_HD inline
#endif

namespace xsam_scalars {

// indices of `sc` (base.py)
constexpr int kSumSq = 0, kGG = 1, kDD = 2, kDG = 3, kPsi = 4, kNormG = 5, kNormD = 6,
              kCD = 7, kCG = 8, kFoundInf = 9, kOk = 10, kEps = 11, kMaxNorm = 12,
              kAlpha = 13, kSkipped = 14, kNumScalars = 15;
// indices of a bucket's `hyper` (base.py)
constexpr int kRadius = 0, kLr = 1, kWeightDecay = 2, kMomentum = 3, kDampening = 4,
              kBeta1 = 3, kBeta2 = 4, kAdamEps = 5, kNumHyper = 6;

constexpr double kSinPsiMin = 1e-8;  // coefficients.SIN_PSI_MIN
constexpr double kClipEps = 1e-6;    // coefficients.CLIP_EPS

XSAM_HD bool finite(double x) { return x - x == 0.0; }  // false for inf and NaN

// num / den, and 0 where den == 0 (coefficients._div)
XSAM_HD double safe_div(double num, double den) { return den != 0.0 ? num / den : 0.0; }

XSAM_HD void set_found(double* sc, bool bad, bool keep, bool check) {
  double found = (check && bad) ? 1.0 : 0.0;
  if (keep && sc[kFoundInf] > found) found = sc[kFoundInf];
  sc[kFoundInf] = found;
}

XSAM_HD void end_step(double* sc) {
  sc[kOk] = 1.0 - sc[kFoundInf];
  sc[kSkipped] = sc[kSkipped] + sc[kFoundInf];
}

// coefficients.ascent_scalars
XSAM_HD void ascent_scalars(double* sc, bool first, bool check) {
  set_found(sc, !finite(sc[kSumSq]), !first, check);
}

// coefficients.ascent_scale_of: the ascent scale of a bucket whose radius is `radius`
XSAM_HD double ascent_scale(const double* sc, double radius) {
  if (sc[kFoundInf] != 0.0) return 0.0;
  return safe_div(radius, std::sqrt(sc[kSumSq]) + sc[kEps]);
}

// coefficients.update_scalars
XSAM_HD void update_scalars(double* sc, bool check) {
  const double gg = sc[kGG], dd = sc[kDD], dg = sc[kDG], eps = sc[kEps], alpha = sc[kAlpha];
  const double norm_g = std::sqrt(gg), norm_d = std::sqrt(dd);
  double cos = safe_div(dg, (norm_d + eps) * (norm_g + eps));
  cos = cos < -1.0 ? -1.0 : (cos > 1.0 ? 1.0 : cos);  // NaN stays NaN
  const double psi = std::acos(cos);
  const double sin_psi = std::sin(psi);
  double a = 0.5, b = 0.5;
  if (!(sin_psi < kSinPsiMin)) {
    a = std::sin((1.0 - alpha) * psi) / sin_psi;
    b = std::sin(alpha * psi) / sin_psi;
  }
  double cd = safe_div(norm_g * a, norm_d + eps);
  double cg = safe_div(norm_g * b, norm_g + eps);
  const double max_norm = sc[kMaxNorm];
  if (max_norm >= 0.0) {
    double sq = cd * cd * dd + cg * cg * gg + 2.0 * cd * cg * dg;
    sq = sq < 0.0 ? 0.0 : sq;  // clamp_min(0); NaN stays NaN, as with torch
    double clip = max_norm / (std::sqrt(sq) + kClipEps);
    clip = clip > 1.0 ? 1.0 : clip;
    cd *= clip;
    cg *= clip;
  }
  const double g_sq = cd * cd * dd + cg * cg * gg + 2.0 * cd * cg * dg;
  const bool bad = !(finite(gg) && finite(dd) && finite(dg) && finite(cd) && finite(cg) &&
                     finite(g_sq));
  sc[kPsi] = psi;
  sc[kNormG] = norm_g;
  sc[kNormD] = norm_d;
  sc[kCD] = cd;
  sc[kCG] = cg;
  set_found(sc, bad, /*keep=*/true, check);
  end_step(sc);
}

// coefficients.plain_scalars
XSAM_HD void plain_scalars(double* sc, bool check) {
  set_found(sc, !finite(sc[kSumSq]), /*keep=*/false, check);
  sc[kCD] = 0.0;
  sc[kCG] = 1.0;
  end_step(sc);
}

// Adam's per-tensor scalars from its step count, in double as torch computes them in
// Python (base.py, adam_update): step_size = lr / (1 - beta1^step),
// bias_correction2_sqrt = sqrt(1 - beta2^step).
struct AdamStep {
  double step_size, bias_correction2_sqrt;
};
XSAM_HD AdamStep adam_step(double lr, double beta1, double beta2, double step) {
  return AdamStep{lr / (1.0 - std::pow(beta1, step)), std::sqrt(1.0 - std::pow(beta2, step))};
}

}  // namespace xsam_scalars
