# Writes the bundled tiny UNet in the file layouts diffusers' save_pretrained
# produces (sharded, .bin, fp16 variant, fp16 sharded, fp16 .bin) into OUT.
import os
import sys

from diffusers import UNet2DConditionModel

out = sys.argv[1]
src = sys.argv[2] if len(sys.argv) > 2 else "assets/tiny-sd2/unet"
m = UNet2DConditionModel.from_pretrained(src)
m.save_pretrained(out + "/sharded", max_shard_size="200KB")
m.save_pretrained(out + "/bin", safe_serialization=False)
h = UNet2DConditionModel.from_pretrained(src).half()
h.save_pretrained(out + "/fp16", variant="fp16")
h.save_pretrained(out + "/fp16sharded", variant="fp16", max_shard_size="100KB")
h.save_pretrained(out + "/fp16bin", variant="fp16", safe_serialization=False)
for d in sorted(os.listdir(out)):
    print(d, sorted(os.listdir(os.path.join(out, d))))
