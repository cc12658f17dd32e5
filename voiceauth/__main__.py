from voiceauth.cli import main

raise SystemExit(main())
