# Before a device call: write the checkout's commit (with "-dirty" when tracked files differ from it)
# to .dq_commit, git-ignored, and name it in the call's carry list ([".whl", ".dq_commit"]).
# tools/gpu_env.sh exports it as DQ_GIT_COMMIT, so the GPU's reports name the tree they measured:
# the device's copy of .git can lag behind the working tree.
commit=$(git rev-parse HEAD) || exit 1
[ -n "$(git status --porcelain --untracked-files=no)" ] && commit="$commit-dirty"
echo "$commit" > .dq_commit
echo "$commit"
