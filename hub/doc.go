// Package hub fetches model files from the Hugging Face Hub into the local
// cache that huggingface_hub (the Python library behind diffusers and
// transformers) keeps, laid out exactly as it lays it out, so that folders
// downloaded by Python tools are reused as they are and the other way round:
//
//	$HF_HUB_CACHE (default $HF_HOME/hub, default ~/.cache/huggingface/hub)
//	└── models--org--name
//	    ├── refs/main                  commit hash the branch/tag pointed at
//	    ├── blobs/<etag>               file contents (git sha1 or LFS sha256)
//	    ├── snapshots/<commit>/<file>  relative symlinks into blobs/
//	    └── .no_exist/<commit>/<file>  files known to be absent
//
// A model id names a repository ("org/name", or "name"); a revision is a
// branch, a tag or a commit hash ("main" when empty). [Client.Download]
// follows hf_hub_download: a HEAD request to
// {endpoint}/{repo}/resolve/{revision}/{file} gives the commit
// (X-Repo-Commit), the blob id (X-Linked-Etag or ETag) and size; the file is
// downloaded into blobs/<etag>.incomplete (resumed with a Range request when
// a previous try was cut), checked (size, and the sha256 of LFS files) and
// renamed into place, then linked from snapshots/. [Client.Snapshot] and
// [Client.RepoFiles] follow snapshot_download, fetching only the files that
// match the caller's patterns.
//
// The environment is read as huggingface_hub reads it (see [FromEnv]):
// HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN (or the token file),
// HF_HUB_OFFLINE=1 (no network: files come from the cache or the call fails
// naming the file), HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT and
// HF_HUB_DISABLE_PROGRESS_BARS.
package hub
