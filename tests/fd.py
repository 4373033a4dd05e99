"""Central finite differences over a model's flat parameter buffer (float64, relative step 1e-6)."""
import numpy as np


def fd_gradient(model, loss_at, rel_step=1e-6):
    """∂loss/∂θ by central differences; loss_at() evaluates the loss at the model's current θ.

    Step h_i = rel_step·max(1, |θ_i|): truncation error O(h²·L''') ~ 1e-12 and rounding error
    O(ε·L/h) ~ 1e-10 relative, far below the 1e-6 tolerance the tests assert.
    """
    flat = model.theta
    g = np.empty(flat.size)
    for i in range(flat.size):
        old = float(flat[i])
        h = rel_step * max(1.0, abs(old))
        flat[i] = old + h
        up = loss_at()
        flat[i] = old - h
        down = loss_at()
        flat[i] = old
        g[i] = (up - down) / (2 * h)
    return g


def flat_grad(model, grads):
    """Concatenate a grads dict in the order of the model's flat buffer."""
    return np.concatenate([np.asarray(grads[k]).ravel() for k in model.params])


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
