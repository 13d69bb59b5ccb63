from napari_cinema.cli import main

raise SystemExit(main())
