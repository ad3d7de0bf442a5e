package org.shira.core;

import java.util.Map;
import java.util.Set;

/** An inference engine that runs the style net over weights a {@link PatchableBase} patches in place
 *  (the app's ONNX Runtime and ExecuTorch engines). Called from ONE thread only, never while a patch is being
 *  written: neither engine synchronises its kernels with writes to the weights. */
public interface StyleEngine extends AutoCloseable {
    /** Shown on screen: "ONNX Runtime", "ExecuTorch (XNNPACK)". */
    String name();

    /** Style a [1, 3, size, size] image of floats in [0, 1]; returns the [3, size, size] result. */
    float[] run(float[] chw, int size) throws Exception;

    /** The patcher has just written `changed` (placement names): make the next run read them (ExecuTorch
     *  reloads its method when one of them was packed at load; ONNX Runtime reads them at every run). Returns
     *  whether it reloaded. */
    boolean weightsChanged(Set<String> changed) throws Exception;

    /** As {@link #weightsChanged(Set)}, with the entries the commit touched per placement
     *  ({@link WeightPatcher#touchedBy}): an engine that keeps its own copy of the weights (ONNX Runtime in place:
     *  {@link BakedWeights}) writes their new values there. */
    default boolean weightsChanged(Set<String> changed, Map<String, int[]> touched) throws Exception {
        return weightsChanged(changed);
    }

    /** Release every native object. Idempotent. */
    @Override
    void close();
}
