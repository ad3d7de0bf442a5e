package org.shira.demo;

import java.io.File;
import java.nio.FloatBuffer;
import java.util.Set;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.ExecutorchRuntimeException;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;
import org.shira.core.PatchableBase;
import org.shira.core.StyleEngine;

/** The style net on ExecuTorch (XNNPACK), from a private copy of model.pte that the app patches in place.
 *
 *  The app maps its copy of the program read-write and PatchableBase writes adapters at the byte offsets the
 *  manifest gives. ExecuTorch loads the same file with LOAD_MODE_MMAP, so both see the same pages:
 *  - `reload: false` weights (Linear, lowered with force_non_static_weights_for_f32_linear) are read from the
 *    program's bytes at every execute, so a write is live at the next run;
 *  - `reload: true` weights (conv) were packed by XNNPACK when the method was loaded, so after writing one the
 *    module is destroyed and loaded again from the patched file; that reload is part of the switch time.
 *  The ExecuTorch Java API cannot load from a buffer the app owns (Module.load takes a path), which is why the
 *  program lives in a file. tests/test_java_core.py runs both routes on the host with ExecuTorch's own loader. */
final class ExecuTorchStyleEngine implements StyleEngine {
    private final File program;
    private final PatchableBase base;
    private final int threads;
    private final FloatBuffer image;
    private final Tensor input;
    private Module module;

    ExecuTorchStyleEngine(File program, PatchableBase base, int size, int threads) {
        this.program = program;
        this.base = base;
        this.threads = threads;
        image = Tensor.allocateFloatBuffer(3 * size * size);
        input = Tensor.fromBlob(image, new long[]{1, 3, size, size}); // aliases `image`: no copy per run
        load();
    }

    private void load() {
        module = Module.load(program.getAbsolutePath(), Module.LOAD_MODE_MMAP, threads);
        try {
            module.loadMethod("forward"); // load (and let XNNPACK pack) now, not in the first run; throws on failure
        } catch (ExecutorchRuntimeException e) {
            close();
            throw new IllegalStateException("ExecuTorch cannot load forward() of " + program.getName()
                    + " (error 0x" + Integer.toHexString(e.getErrorCode())
                    + "): is executorch-android older than the exporter?", e);
        }
    }

    @Override
    public String name() { return "ExecuTorch (XNNPACK)"; }

    @Override
    public float[] run(float[] chw, int size) {
        image.clear();
        image.put(chw);
        EValue[] out = module.forward(EValue.from(input));
        if (out.length == 0) throw new IllegalStateException("ExecuTorch returned no output (module destroyed?)");
        return out[0].toTensor().getDataAsFloatArray();
    }

    @Override
    public boolean weightsChanged(Set<String> changed) {
        if (!base.needsReload(changed)) return false;
        module.destroy(); // drops XNNPACK's packed copies of the old weights
        module = null;
        load();
        return true;
    }

    @Override
    public void close() {
        if (module != null) {
            module.destroy();
            module = null;
        }
    }
}
