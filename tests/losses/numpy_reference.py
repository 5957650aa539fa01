"""Independent float64 NumPy versions of the reference formulas, written the way the reference
libraries write them (boolean indexing, Python loops over classes, NCHW-free flat arrays),
plus a finite-difference gradient to check JAX gradients against.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def log_softmax(x):
    return x - special.logsumexp(x, axis=-1, keepdims=True)


def softmax(x):
    return np.exp(log_softmax(x))


def sigmoid(x):
    return special.expit(x)


def numeric_grad(f, x, step=1e-6):
    """Central finite differences of scalar `f` at float64 `x`."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        bump = np.zeros_like(x)
        bump[index] = step
        grad[index] = (f(x + bump) - f(x - bump)) / (2 * step)
    return grad


# ----------------------------------------------------------------------------- classification


def cross_entropy(logits, labels, weight=None, ignore_index=None, smoothing=0.0, reduction="mean"):
    """torch F.cross_entropy with class-index targets (aten LossNLL.cpp formulas)."""
    num_classes = logits.shape[-1]
    logp = log_softmax(logits).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    weight = np.ones(num_classes) if weight is None else np.asarray(weight, np.float64)
    keep = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    losses = np.zeros(labels.shape)
    denominator = 0.0
    for n in np.flatnonzero(keep):
        y = labels[n]
        nll = -weight[y] * logp[n, y]
        smooth = -np.sum(weight * logp[n])
        losses[n] = (1 - smoothing) * nll + smoothing / num_classes * smooth
        denominator += weight[y]
    if reduction == "none":
        return losses.reshape(np.shape(logits)[:-1])
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / denominator if denominator > 0 else 0.0


def cross_entropy_soft(logits, targets, weight=None, smoothing=0.0):
    num_classes = logits.shape[-1]
    targets = targets * (1 - smoothing) + smoothing / num_classes
    weight = np.ones(num_classes) if weight is None else weight
    per_row = -np.sum(weight * targets * log_softmax(logits), axis=-1)
    return per_row.mean()


def bce_with_logits(x, y, pos_weight=None, weight=None):
    pw = 1.0 if pos_weight is None else pos_weight
    loss = -(pw * y * np.log(sigmoid(x)) + (1 - y) * np.log(1 - sigmoid(x)))
    return loss if weight is None else loss * weight


def softmax_focal(logits, labels, gamma, ignore_index=None, weight=None):
    """CE * (1 - p_y)^gamma, torch-style weighted mean over kept pixels."""
    num_classes = logits.shape[-1]
    p = softmax(logits).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    keep = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    weight = np.ones(num_classes) if weight is None else weight
    y = labels[keep]
    pt = p[keep][np.arange(len(y)), y]
    if len(y) == 0:
        return 0.0
    return np.sum(weight[y] * (1 - pt) ** gamma * -np.log(pt)) / np.sum(weight[y])


def sigmoid_focal(x, t, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss, reduction='none'."""
    p = sigmoid(x)
    ce = bce_with_logits(x, t)
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def smp_binary_focal(x, t, gamma, alpha=None, ignore_index=None):
    """smp focal_loss_with_logits on flattened, non-ignored elements, mean."""
    x, t = x.reshape(-1), t.reshape(-1)
    if ignore_index is not None:
        keep = t != ignore_index
        x, t = x[keep], t[keep]
    logpt = bce_with_logits(x, t)
    pt = np.exp(-logpt)
    loss = (1 - pt) ** gamma * logpt
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss.mean()


# ----------------------------------------------------------------------------- region


def smp_tversky(
    probs,
    targets,
    alpha,
    beta,
    smooth=0.0,
    eps=1e-7,
    log_loss=False,
    classes=None,
    class_weights=None,
    gamma=1.0,
    per_image=False,
):
    """smp soft_tversky_score on [B, N, C] flattened arrays with the L1 overlap, empty-class mask."""
    batch, num_classes = probs.shape[0], probs.shape[-1]
    probs = probs.reshape(batch, -1, num_classes)
    targets = targets.reshape(batch, -1, num_classes)
    groups = [(probs[b : b + 1], targets[b : b + 1]) for b in range(batch)] if per_image else [(probs, targets)]
    results = []
    for x, y in groups:
        per_class = []
        for c in range(num_classes):
            xc, yc = x[..., c].ravel(), y[..., c].ravel()
            inter = (xc.sum() + yc.sum() - np.abs(xc - yc).sum()) / 2
            fp, fn = xc.sum() - inter, yc.sum() - inter
            score = (inter + smooth) / max(inter + alpha * fp + beta * fn + smooth, eps)
            loss = -np.log(max(score, eps)) if log_loss else 1 - score
            per_class.append(loss * (yc.sum() > 0))
        per_class = np.array(per_class)
        w = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
        if classes is not None:
            per_class, w = per_class[classes], w[classes]
        results.append((np.sum(w * per_class) / np.sum(w)) ** gamma)
    return np.array(results) if per_image else results[0]


def monai_gdl(probs, onehot, w_type="square", nr=1e-5, dr=1e-5, batch=False, include_background=True):
    """MONAI GeneralizedDiceLoss on [B, N, C] probabilities and one-hot targets; [B] or scalar."""
    if not include_background:
        probs, onehot = probs[..., 1:], onehot[..., 1:]
    b = probs.shape[0]
    x = probs.reshape(b, -1, probs.shape[-1])
    y = onehot.reshape(b, -1, onehot.shape[-1])
    axes = (0, 1) if batch else (1,)
    tp = (x * y).sum(axes)
    denom = x.sum(axes) + y.sum(axes)
    ground = y.sum(axes)
    with np.errstate(divide="ignore"):
        w = {"square": 1 / ground**2, "simple": 1 / ground, "uniform": np.ones_like(ground)}[w_type]
    infs = np.isinf(w)
    w[infs] = 0
    w = w + infs * (w.max() if batch else w.max(axis=-1, keepdims=True))
    f = 1 - (2 * (tp * w).sum(-1) + nr) / ((denom * w).sum(-1) + dr)
    return f


# ----------------------------------------------------------------------------- Lovász


def _lovasz_grad(gt_sorted):
    gts = gt_sorted.sum()
    intersection = gts - np.cumsum(gt_sorted)
    union = gts + np.cumsum(1 - gt_sorted)
    jaccard = 1 - intersection / union
    if len(gt_sorted) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax_flat(probs, labels):
    """Berman et al.'s lovasz_softmax_flat, classes='present'; probs [P, C], labels [P]."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - probs[:, c])
        order = np.argsort(-errors, kind="stable")
        losses.append(np.dot(errors[order], _lovasz_grad(fg[order])))
    return float(np.mean(losses)) if losses else 0.0


def lovasz_softmax(logits, labels, per_image=False, ignore=None):
    probs = softmax(logits)
    num_classes = probs.shape[-1]

    def flat(p, lab):
        p, lab = p.reshape(-1, num_classes), lab.reshape(-1)
        keep = np.ones(lab.shape, bool) if ignore is None else lab != ignore
        return lovasz_softmax_flat(p[keep], lab[keep])

    if per_image:
        return np.array([flat(p, lab) for p, lab in zip(probs, labels)])
    return flat(probs, labels)


def lovasz_hinge(logits, labels, per_image=False, ignore=None):
    def flat(x, lab):
        x, lab = x.reshape(-1), lab.reshape(-1)
        if ignore is not None:
            keep = lab != ignore
            x, lab = x[keep], lab[keep]
        if len(lab) == 0:
            return 0.0
        errors = 1 - x * (2 * lab - 1)
        order = np.argsort(-errors, kind="stable")
        return float(np.dot(np.maximum(errors[order], 0), _lovasz_grad(lab[order])))

    if per_image:
        return np.array([flat(x, lab) for x, lab in zip(logits, labels)])
    return flat(logits, labels)


# ----------------------------------------------------------------------------- boundary


def gradient_loss(probs, targets, valid, operator="forward", p=2):
    """Direct loops over [B, H, W, C]: mean of |D p - D y|^p over fully valid footprints."""
    batch, height, width, channels = probs.shape
    d = probs - targets
    total, count = 0.0, 0
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                for axis in (0, 1):
                    value, footprint = _derivative(d[b], valid[b], i, j, axis, operator)
                    if value is None or footprint == 0:
                        continue
                    total += footprint * np.sum(np.abs(value) ** p)
                    count += footprint * channels
    return total / count if count else 0.0


def _derivative(d, valid, i, j, axis, operator):
    """The derivative at anchor (i, j) (top-left of the footprint) and the footprint weight."""
    height, width = valid.shape
    if operator == "forward":
        di, dj = (1, 0) if axis == 0 else (0, 1)
        if i + di >= height or j + dj >= width:
            return None, 0
        return d[i + di, j + dj] - d[i, j], valid[i, j] * valid[i + di, j + dj]
    if operator == "central":
        di, dj = (2, 0) if axis == 0 else (0, 2)
        if i + di >= height or j + dj >= width:
            return None, 0
        cells = [(i + k * di // 2, j + k * dj // 2) for k in range(3)]
        return (d[cells[2]] - d[cells[0]]) / 2, np.prod([valid[c] for c in cells])
    if i + 2 >= height or j + 2 >= width:
        return None, 0
    patch = d[i : i + 3, j : j + 3]
    gx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8.0  # derivative along width
    kernel = gx if axis == 1 else gx.T
    return np.einsum("ij,ijc->c", kernel, patch), np.prod(valid[i : i + 3, j : j + 3])
