"""The ops: one module per op family, each holding its NumPy reference and its CUDA launcher side by side
(``op`` and ``op_cuda``, same arguments, same contract; kernels/<family>.cu). pmm_gpu.backend binds one
set or the other; pmm_gpu.functional composes them into the two PMM types.

    assemble    packed parameters <-> Hermitian matrices, the smoothing term
    eigh        eigenpair selection, the eigendecomposition's reverse mode, chunked library eigh
    jacobi      the fused Jacobi eigensolver kernels (assemble + eigh [+ observables])
    observable  the AO-PMM observables and their reverse mode
    adam        one fused Adam step
"""
