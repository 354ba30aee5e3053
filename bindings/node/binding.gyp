{
  "targets": [
    {
      "target_name": "shmbus",
      "sources": ["src/addon.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!(node scripts/libshmbus.js include)"
      ],
      "libraries": [
        "-L<!(node scripts/libshmbus.js lib)",
        "-lshmbus",
        "-Wl,-rpath,<!(node scripts/libshmbus.js lib)"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
