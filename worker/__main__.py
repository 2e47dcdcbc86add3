from worker.settings import main

main()
