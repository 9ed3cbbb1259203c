"""The first lines of a child Python that must run without torch (the agent on a Jetson, the CI
gate): any import of torch in it raises, so a stray import fails the test instead of passing."""

BLOCK_TORCH = '''
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked: this command must run without it")
        return None

sys.meta_path.insert(0, BlockTorch())
'''
