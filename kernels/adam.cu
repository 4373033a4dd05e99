// adam.cu: one fused, bias-corrected Adam step over the flat parameter buffer (Kingma & Ba, 2015).
//
//   g ← s·g,   m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
//   θ ← θ − lr · (m / bc1) / (sqrt(v / bc2) + ε),   bc1 = 1 − β1^t,  bc2 = 1 − β2^t
//
// The NumPy reference is pmm_gpu/ops/adam.py. s is the global-norm clipping factor; it stays on the
// device (a 1-element array) so that clipping never synchronises with the host. The host scalars
// arrive as double (what CuPy passes for a Python float) and are rounded to T once, as NumPy does
// with Python scalars on float32 arrays.
#include "common.cuh"

template <class T>
__global__ void adam_step(T* __restrict__ theta,       // (N,) parameters, updated in place
                          const T* __restrict__ grad,  // (N,) gradient
                          T* __restrict__ m,           // (N,) first moment, updated in place
                          T* __restrict__ v,           // (N,) second moment, updated in place
                          long long N, double lr, double beta1, double beta2, double eps,
                          double bc1, double bc2,
                          const T* __restrict__ scale) {  // (1,) clipping factor s
  const T s = *scale, b1 = T(beta1), b2 = T(beta2), c1 = T(1 - beta1), c2 = T(1 - beta2);
  const T step = T(lr), e = T(eps), d1 = T(bc1), d2 = T(bc2);
  grid_stride_for(N, [&](auto k) {  // no division: a 32-bit index only saves registers
    const T g = grad[k] * s;
    const T mk = b1 * m[k] + c1 * g;
    const T vk = b2 * v[k] + c2 * (g * g);
    m[k] = mk;
    v[k] = vk;
    theta[k] -= step * (mk / d1) / (sqrt(vk / d2) + e);
  });
}
