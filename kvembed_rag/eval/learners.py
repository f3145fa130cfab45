"""The two learners MTEB puts on top of frozen embeddings: logistic regression and k-means (torch/numpy only)."""

from __future__ import annotations

import numpy as np
import torch


def fit_predict_logistic(
    train_x: np.ndarray,
    train_y: list[str],
    test_x: np.ndarray,
    *,
    c: float = 1.0,
    max_iter: int = 100,
) -> list[str]:
    """Multinomial logistic regression with an L2 penalty ``||W||^2 / (2c)`` on the summed log loss, fitted
    with L-BFGS (scikit-learn's ``LogisticRegression(C=c, max_iter=100)``, which MTEB uses)."""
    labels = sorted(set(train_y))
    index = {label: i for i, label in enumerate(labels)}
    x = torch.as_tensor(np.asarray(train_x, dtype=np.float64))  # (n, d)
    y = torch.tensor([index[label] for label in train_y])  # (n,)
    weight = torch.zeros(x.shape[1], len(labels), dtype=torch.float64, requires_grad=True)  # (d, classes)
    bias = torch.zeros(len(labels), dtype=torch.float64, requires_grad=True)  # (classes,)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight + bias  # (n, classes)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum") + (weight * weight).sum() / (2 * c)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        scores = torch.as_tensor(np.asarray(test_x, dtype=np.float64)) @ weight + bias  # (m, classes)
    return [labels[i] for i in scores.argmax(dim=1).tolist()]


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 3, max_iter: int = 100) -> np.ndarray:
    """Cluster ids ``(n,)`` from Lloyd's k-means with k-means++ seeding; the best of ``n_init`` runs by inertia."""
    points = np.asarray(x, dtype=np.float64)  # (n, d)
    if not 1 <= k <= len(points):
        raise ValueError(f"k must be between 1 and the number of points ({len(points)}); got {k}")
    rng = np.random.default_rng(seed)
    squared = (points * points).sum(axis=1)  # (n,)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(n_init):
        centres = [points[rng.integers(len(points))]]
        closest = ((points - centres[0]) ** 2).sum(axis=1)  # (n,)
        for _ in range(1, k):
            total = closest.sum()
            pick = rng.choice(len(points), p=closest / total) if total > 0 else rng.integers(len(points))
            centres.append(points[pick])
            closest = np.minimum(closest, ((points - points[pick]) ** 2).sum(axis=1))
        centre = np.stack(centres)  # (k, d)
        assignment = np.full(len(points), -1)
        for _ in range(max_iter):
            distances = squared[:, None] - 2 * points @ centre.T + (centre * centre).sum(axis=1)[None, :]  # (n, k)
            new = distances.argmin(axis=1)
            if np.array_equal(new, assignment):
                break
            assignment = new
            for j in range(k):
                members = points[assignment == j]
                if len(members):
                    centre[j] = members.mean(axis=0)
        inertia = float(distances[np.arange(len(points)), assignment].sum())
        if best is None or inertia < best[0]:
            best = (inertia, assignment.copy())
    assert best is not None
    return best[1]
